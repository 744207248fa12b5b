"""`csm-router web`: `/metrics` for Prometheus and `/healthz` for load balancers and
container health checks, for the whole deployment, read from Redis.

Nothing here changes state: every figure is read at request time from what the routers
and workers keep in Redis (see metrics.py), so any number of web processes agree.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from types import FrameType

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from csm_router.config import ConfigError, Settings
from csm_router.metrics import RedisCollector, health, processes

log = logging.getLogger(__name__)


def create_app(settings: Settings, redis: Redis) -> Starlette:
    """The ASGI application; `redis` is shared by every request (it is thread-safe)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(redis, settings))

    # Plain functions: Starlette runs them in its thread pool, off the event loop, which
    # is what the blocking Redis client needs.
    def metrics(request: Request) -> Response:
        try:
            body = generate_latest(registry)
        except Exception as exc:  # Redis down: say so, as an error Prometheus records
            return PlainTextResponse(f"metrics unavailable: {exc}\n", status_code=503)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    def healthz(request: Request) -> Response:
        now = time.time()
        problems = health(redis, now)
        if problems:
            return PlainTextResponse("unhealthy\n" + "".join(f"- {p}\n" for p in problems),
                                     status_code=503)
        routers = [p for p in processes(redis, now) if p.role == "router"]
        lines = [f"- router {p.name} (pid {p.pid} on {p.host}) beat "
                 f"{p.silent_for(now):.0f}s ago" for p in routers]
        return PlainTextResponse("ok\n" + "".join(f"{line}\n" for line in lines))

    return Starlette(routes=[Route("/metrics", metrics), Route("/healthz", healthz)])


class _Server(uvicorn.Server):
    """uvicorn, but a stop request ends the process with status 0 like the router and
    the workers, instead of dying again by the signal once shut down."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        def stop(signum: int, frame: FrameType | None) -> None:
            self.should_exit = True

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve(settings: Settings, redis: Redis) -> None:
    """Listen on ROUTER_WEB_ADDRESS until SIGTERM or SIGINT."""
    host, port = settings.web_bind
    # Bound here, so a port in use is one line naming the setting, not a server's log.
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise ConfigError("ROUTER_WEB_ADDRESS", f"cannot listen on {settings.web_address}: "
                          f"{exc.strerror or exc}") from None
    config = uvicorn.Config(create_app(settings, redis), log_config=None, access_log=False,
                            lifespan="off", timeout_graceful_shutdown=5)
    log.info("web listening on http://%s:%s (/metrics, /healthz)",
             f"[{host}]" if ":" in host else host, port)
    _Server(config).run(sockets=[listener])


def probe(url: str, timeout: float = 5.0) -> tuple[bool, str]:
    """GET `url` (a /healthz): whether it answered 200, and what it said."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status == 200, answer.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return False, exc.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"{url} did not answer ({reason}): is `csm-router web` running?\n"


def health_url(settings: Settings) -> str:
    """Where this host's web process answers /healthz (a wildcard bind is asked locally)."""
    host, port = settings.web_bind
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1" if host != "::" else "::1"
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/healthz"
