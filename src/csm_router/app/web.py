"""`csm-router web`: `/metrics` for Prometheus and `/healthz` for load balancers and
container health checks, for the whole deployment, read from Redis; and the lead's status
page (`/`, `/thread/CS-n`) behind HTTP Basic auth.

Nothing here changes state: every figure is read at request time from what the routers
and workers keep in Redis (see metrics.py, statuspage.py), so any number of web
processes agree. The pages answer GET only and hold no forms.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from types import FrameType

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis import Redis
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from csm_router.app.webguard import Gate, HostCheck, LoginThrottle, allowed_hosts
from csm_router.config import ConfigError, Settings, is_loopback
from csm_router.config.teams import current_team
from csm_router.core.threads import format_ref, parse_ref
from csm_router.lead.health import Health
from csm_router.lead.metrics import RedisCollector
from csm_router.lead.statuspage import overview
from csm_router.lead.threadpage import thread_view
from csm_router.mail.outbound import failing_line, template_environment
from csm_router.state.store import Store

log = logging.getLogger(__name__)

# The pages carry the lead's customers' names and subjects: never cached, never framed,
# and no script runs even if something slipped past escaping.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def web_password(settings: Settings) -> str | None:
    """ROUTER_WEB_PASSWORD, or None when unset (or empty); refuses to serve the pages
    without one on anything but loopback."""
    password = settings.web_password.get_secret_value() if settings.web_password else ""
    if password:
        return password
    host, _ = settings.web_bind
    if not is_loopback(host):
        raise ConfigError("ROUTER_WEB_PASSWORD", f"is not set, and ROUTER_WEB_ADDRESS "
                          f"{settings.web_address} is not loopback: set a password for the "
                          "status page (or listen on 127.0.0.1)")
    return None


def create_app(settings: Settings, redis: Redis,
               clock: Callable[[], float] = time.time,
               throttle: LoginThrottle | None = None) -> Starlette:
    """The ASGI application; `redis` is shared by every request (it is thread-safe).

    Raises ConfigError when the status page would be open beyond this machine."""
    site = _Site(settings, redis, clock, throttle or LoginThrottle())
    return Starlette(routes=[
        Route("/metrics", site.metrics),  # no auth needed: Prometheus and health checks read these
        Route("/healthz", site.healthz),
        Route("/", site.guarded(site.status_page)),
        Route("/thread/{ref}", site.guarded(site.thread_page)),
    ], middleware=[Middleware(HostCheck, allowed=allowed_hosts(settings))])


class _Site:
    """What each address answers.

    Plain methods, not coroutines: Starlette runs them in its thread pool, off the event
    loop, which is what the blocking Redis client needs.
    """

    def __init__(self, settings: Settings, redis: Redis, clock: Callable[[], float],
                 throttle: LoginThrottle) -> None:
        self.password = web_password(settings)
        self.clock = clock
        self.store = Store(redis, settings)
        # Always escaped, whatever the file is called; an admin's versions first, sandboxed.
        self.pages = template_environment(settings.templates_dir, autoescape=True,
                                          trim_blocks=True, lstrip_blocks=True,
                                          keep_trailing_newline=False)
        self.registries = {detailed: CollectorRegistry(auto_describe=False)
                           for detailed in (False, True)}
        for detailed, registry in self.registries.items():
            registry.register(RedisCollector(redis, settings, detailed=detailed))
        self.gate = Gate(settings.web_user, self.password, throttle)
        self.health = Health(redis, zone=settings.report_zone)

    def metrics(self, request: Request) -> Response:
        detailed = self.gate.check(request)
        if isinstance(detailed, Response):
            return detailed
        self.health.look()
        try:
            body = generate_latest(self.registries[detailed])
        except Exception as exc:  # Redis down: say so, as an error Prometheus records
            return PlainTextResponse(f"metrics unavailable: {_said(exc, detailed)}\n",
                                     status_code=503)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    def healthz(self, request: Request) -> Response:
        detailed = self.gate.check(request)
        if isinstance(detailed, Response):
            return detailed
        healthy, lines = self.health.report(self.clock(), detailed=detailed)
        return PlainTextResponse(("ok\n" if healthy else "unhealthy\n") + "".join(
            f"- {line}\n" for line in lines), status_code=200 if healthy else 503)

    def guarded(self, page: Callable[[Request], Response]) -> Callable[[Request], Response]:
        """`page` behind the login (when a password is set), with the page headers."""
        def answer(request: Request) -> Response:
            allowed = True if self.password is None else self.gate.check(request)
            if isinstance(allowed, Response):
                response = allowed
            elif not allowed:
                response = self.gate.refused()
            else:
                try:
                    self.health.look()
                    response = page(request)
                except RedisError as exc:
                    response = PlainTextResponse(f"Redis unreachable: {exc}\n", status_code=503)
            response.headers.update(PAGE_HEADERS)
            return response
        return answer

    def render(self, template: str, **context: object) -> Response:
        try:
            return HTMLResponse(self.pages.get_template(template).render(**context))
        except Exception as exc:  # an override that compiled but fails on these values
            said = f"template {failing_line(exc, template)} cannot be rendered " \
                   f"({type(exc).__name__}: {str(exc)[:200]})"
            log.error("status page: %s", said)
            return PlainTextResponse(f"500 Internal Server Error: {said}; fix it in "
                                     "ROUTER_TEMPLATES_DIR\n", status_code=500)

    def status_page(self, request: Request) -> Response:
        now = self.clock()
        # The verdict /healthz gives, so the page never says otherwise.
        verdict = self.health.verdict(now, detailed=True)
        return self.render("status.html.j2", **overview(self.store, now),
                           health=verdict.banners(), team=current_team())

    def thread_page(self, request: Request) -> Response:
        ref = parse_ref(request.path_params["ref"])
        view = thread_view(self.store, ref, self.clock()) if ref is not None else None
        if view is None:
            what = f"no thread {format_ref(ref)}" if ref is not None else (
                "not a thread reference like CS-1042")
            return PlainTextResponse(f"404 Not Found: {what}\n", status_code=404)
        return self.render("thread.html.j2", **view)


def _said(exc: Exception, detailed: bool) -> str:
    """An error as told to a caller: its kind only, unless they logged in (a Redis
    error names hosts and ports)."""
    return str(exc) if detailed else f"{type(exc).__name__} (details with credentials)"


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


def serve(settings: Settings, redis: Redis, app: Starlette | None = None) -> None:
    """Listen on ROUTER_WEB_ADDRESS until SIGTERM or SIGINT (with `app`, for every team)."""
    host, port = settings.web_bind
    # First: no password off loopback stops us here.
    app = app if app is not None else create_app(settings, redis)
    # Bound here, so a port in use is one line naming the setting, not a server's log.
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise ConfigError("ROUTER_WEB_ADDRESS", f"cannot listen on {settings.web_address}: "
                          f"{exc.strerror or exc}") from None
    config = uvicorn.Config(app, log_config=None, access_log=False,
                            lifespan="off", timeout_graceful_shutdown=5)
    log.info("web listening on http://%s:%s (/metrics, /healthz; the status page / %s)",
             f"[{host}]" if ":" in host else host, port,
             "with HTTP Basic auth" if web_password(settings) else
             "without a password, on loopback only")
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
