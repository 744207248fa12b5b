"""A process's access token: fetched when first needed, refreshed before it lapses.

The mail servers check the token at login only, so a token need only be current when a
connection logs in; but a worker logs in to SMTP at any hour, and a refresh that fails
must be known before the token it would replace runs out, not after.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from csm_router.errors import LoginRefusedError, TransientError

log = logging.getLogger(__name__)

# A token is renewed once this share of its life is left (at most five minutes before it
# lapses): Microsoft's and Google's live an hour, so they are renewed at 55 minutes.
RENEW_SHARE = 0.25
RENEW_AT_MOST = 300.0
# While connected, a renewal that failed is asked again after this long: often enough to
# see a mended app within a minute, rarely enough to spare the provider.
RETRY_WHILE_CONNECTED = 60.0


@dataclass(frozen=True)
class AccessToken:
    """An access token and when it lapses (epoch seconds)."""

    value: str = ""
    expires_at: float = 0.0
    lifetime: float = 0.0  # seconds it was granted for

    def fresh(self, now: float) -> bool:
        """Whether it may still be used, with time to spare for a renewal to fail."""
        spare = min(RENEW_AT_MOST, self.lifetime * RENEW_SHARE)
        return bool(self.value) and now < self.expires_at - spare

    def __repr__(self) -> str:  # never the token itself
        return f"AccessToken(expires_at={self.expires_at:.0f})"


def granted(value: str, expires_in: float, now: float | None = None) -> AccessToken:
    """A token answered now, valid for `expires_in` seconds."""
    now = time.time() if now is None else now
    return AccessToken(value, now + float(expires_in), float(expires_in))


class TokenRefusedError(LoginRefusedError):
    """The identity provider refused to grant a token: a secret expired, consent was taken
    back, the app is not allowed on the mailbox. Only an administrator mends it."""


class Tokens:
    """The current token of one login, shared by the threads of a process.

    Calling it answers a token that is fresh, fetching a new one when needed. A refusal
    raises TokenRefusedError, a provider out of reach TransientError; either way the
    previous token is used while it is still valid, so a brief outage of the identity
    provider costs nothing.
    """

    def __init__(self, fetch: Callable[[], AccessToken], what: str,
                 clock: Callable[[], float] = time.time,
                 fetch_fresh: Callable[[], AccessToken] | None = None) -> None:
        self._fetch = fetch
        # A library that keeps tokens of its own (msal's cache) would answer the token a
        # server just refused: this asks the provider anew.
        self._fetch_fresh = fetch_fresh or fetch
        self._fresh_next = False
        self.what = what  # e.g. "Microsoft 365 (tenant acme.onmicrosoft.com)"
        self._clock = clock
        self._lock = threading.Lock()
        self._token = AccessToken()
        self.refused: str = ""  # the last refusal, in plain words; "" once granted again
        self._granted_once = False
        self._retry_at = 0.0  # keep_fresh's next try after a failed renewal
        self._on_refused: Callable[[str], object] = lambda line: None
        self._on_granted: Callable[[], object] = lambda: None

    def watch(self, refused: Callable[[str], object], granted: Callable[[], object]) -> None:
        """Be told of each refusal, and of the first grant of this process and each grant
        after a refusal (so the deployment learns when a login works again)."""
        self._on_refused, self._on_granted = refused, granted

    @property
    def expires_at(self) -> float:
        """When the token held now lapses (0 before the first)."""
        return self._token.expires_at

    def reject(self, value: str) -> None:
        """A mail server refused this token although it had not lapsed (revoked early, or
        it lacks a permission granted since): the next call gets another."""
        with self._lock:
            if value and value == self._token.value:
                self._token = AccessToken()
                self._fresh_next = True

    def __call__(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token.fresh(now):
                return self._token.value
            try:
                token = (self._fetch_fresh if self._fresh_next else self._fetch)()
            except TokenRefusedError as exc:
                self.refused = str(exc)
                _tell(self._on_refused, self.refused)
                if now < self._token.expires_at:
                    log.error("%s (the current token lasts %.0f s more)", exc,
                              self._token.expires_at - now)
                    return self._token.value
                raise
            except TransientError as exc:
                if now < self._token.expires_at:
                    log.warning("%s: renewing the token later", exc)
                    return self._token.value
                raise
            if self.refused:
                log.info("%s granted a token again", self.what)
            if self.refused or not self._granted_once:
                _tell(self._on_granted)
            self._token, self.refused, self._granted_once = token, "", True
            self._fresh_next = False
            return token.value

    def keep_fresh(self) -> None:
        """Renew the token if it is due, for a process that stays connected.

        The mail servers check a token at login only, so a router in IDLE or a worker
        between sends would not ask for one for hours: a renewal the provider refuses
        (a secret expired, consent withdrawn) would be found at the next login, after the
        old token lapsed. Asked here, the refusal is known and told while the old token
        still works. Nothing is raised; a failed renewal is tried again after
        RETRY_WHILE_CONNECTED seconds.
        """
        now = self._clock()
        if not self._granted_once or self._token.fresh(now) or now < self._retry_at:
            return  # nothing due; before the first login, the login itself asks
        with contextlib.suppress(LoginRefusedError, TransientError):
            self()  # a failure is said by __call__ and told to the listeners
        if not self._token.fresh(self._clock()):
            self._retry_at = self._clock() + RETRY_WHILE_CONNECTED

    @property
    def granted_once(self) -> bool:
        """Whether this process ever got a token: a refusal then is news, not a typo."""
        return self._granted_once


def _tell(listener: Callable[..., object], *args: str) -> None:
    """A listener's failure (Redis away) never costs the login its token."""
    try:
        listener(*args)
    except Exception as exc:
        log.warning("could not record the login's state: %s", exc)
