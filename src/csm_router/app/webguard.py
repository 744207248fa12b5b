"""What stands between `csm-router web` and an attacker: the Host check (a page on
another site cannot reach it by rebinding its own name to this address) and the
throttle on failed logins (guessing the status page's password is slow and logged)."""

from __future__ import annotations

import ipaddress
import logging
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from csm_router.config import Settings, is_loopback
from csm_router.lead.statuspage import credentials_match

log = logging.getLogger(__name__)

REALM = "csm-router"
CLIENT_FAILURES = 5  # a client's failed logins within WINDOW before it must wait
ALL_FAILURES = 30  # everyone's failed logins within WINDOW before logins pause for all
WINDOW_SECONDS = 60.0
MAX_TRACKED = 10_000  # clients remembered at once; the oldest are forgotten first


def host_of(header: str) -> str:
    """The name in a Host header, without its port or IPv6 brackets, lowercased."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


ANY_ADDRESS = "*"  # in allowed_hosts: any IP address, as a wildcard bind listens on all


def allowed_hosts(settings: Settings) -> frozenset[str]:
    """The names a request may use: ROUTER_WEB_ADDRESS's host, and where that is a
    wildcard like 0.0.0.0, this machine's names and any IP address (rebinding needs a
    name: an address in Host is no page elsewhere reading this one)."""
    host, _ = settings.web_bind
    names = {host.lower().strip("[]"), "localhost", "127.0.0.1", "::1"}
    if host in ("", "0.0.0.0", "::"):
        names |= {socket.gethostname().lower(), socket.getfqdn().lower(), ANY_ADDRESS}
    return frozenset(n for n in names if n)


def host_allowed(header: str | None, allowed: frozenset[str]) -> bool:
    """Whether a request's Host header names this server (loopback always does)."""
    if not header:
        return False
    name = host_of(header)
    if name in allowed or is_loopback(name):
        return True
    if ANY_ADDRESS in allowed:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True
    return False


class HostCheck:
    """ASGI middleware: a request whose Host is not one of `allowed` (or loopback) gets
    421 before anything is read or checked. A page elsewhere that rebinds its own name to
    this address (DNS rebinding) sends that name as Host."""

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            header = Headers(scope=scope).get("host")
            if not host_allowed(header, self.allowed):
                refusal = PlainTextResponse(
                    "421 Misdirected Request: this server answers to the host of "
                    "ROUTER_WEB_ADDRESS and to localhost only\n", status_code=421)
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Gate:
    """Who may see what: the status page's credentials (HTTP Basic), checked only while
    the throttle lets this client try."""

    def __init__(self, user: str, password: str | None, throttle: LoginThrottle) -> None:
        self.user, self.password, self.throttle = user, password, throttle

    def check(self, request: Request) -> bool | Response:
        """True with valid credentials, False without any; an answer (401, or 429 while
        throttled) for wrong ones."""
        header = request.headers.get("authorization")
        if self.password is None or not header:
            return False
        client = request.client.host if request.client else "unknown"
        wait = self.throttle.wait_for(client)
        if wait:
            return PlainTextResponse(
                f"429 Too Many Requests: too many failed logins; try again in {wait}s\n",
                status_code=429, headers={"Retry-After": str(wait)})
        if credentials_match(header, self.user, self.password):
            return True
        self.throttle.failed(client)
        return self.refused()

    @staticmethod
    def refused() -> Response:
        return PlainTextResponse(
            "401 Unauthorized: the status page needs ROUTER_WEB_USER and ROUTER_WEB_PASSWORD\n",
            status_code=401, headers={"WWW-Authenticate": f'Basic realm="{REALM}"'})


class LoginThrottle:
    """Failed logins per client and overall within a sliding minute.

    A client past CLIENT_FAILURES waits until its oldest failure leaves the window; past
    ALL_FAILURES (many clients guessing at once), every login waits. Nothing is checked
    while waiting, so a guess made then tells nothing. Kept in this process's memory:
    each web process throttles on its own.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._clients: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()
        self._lock = threading.Lock()

    def wait_for(self, client: str) -> int:
        """Seconds `client` must wait before its next login is checked (0: go ahead)."""
        now = self.clock()
        with self._lock:
            waits = [self._wait(self._all, ALL_FAILURES, now)]
            if (mine := self._clients.get(client)) is not None:
                waits.append(self._wait(mine, CLIENT_FAILURES, now))
        return max(waits)

    def failed(self, client: str) -> None:
        """Count a failed login from `client`, and log it (never what was tried)."""
        now = self.clock()
        with self._lock:
            mine = self._clients.pop(client, None) or deque()
            self._clients[client] = mine  # newest last: the oldest are dropped first
            mine.append(now)
            self._all.append(now)
            if len(self._clients) > MAX_TRACKED:
                del self._clients[next(iter(self._clients))]
            count = len(mine)
        log.warning("status page: failed login from %s (%d within a minute)", client, count)

    @staticmethod
    def _wait(failures: deque[float], limit: int, now: float) -> int:
        while failures and failures[0] <= now - WINDOW_SECONDS:
            failures.popleft()
        if len(failures) < limit:
            return 0
        return max(1, math.ceil(failures[-limit] + WINDOW_SECONDS - now))
