"""Sending over SMTP: the TLS context, sessions, failures as our errors, kept connections."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from email.message import EmailMessage

import aiosmtplib

from csm_router.config import ServerUrl
from csm_router.errors import PermanentError, RefusedError, TransientError, UnsendableError
from csm_router.mail.headers import check_lines
from csm_router.oauth.tokens import Tokens


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The verifying TLS context, built once: loading the CA store costs tens of ms."""
    return ssl.create_default_context()


@contextlib.asynccontextmanager
async def smtp_session(smtp: ServerUrl, timeout: float = 60) -> AsyncIterator[aiosmtplib.SMTP]:
    """A connected SMTP client, logged in if the URL has a user.

    smtp:// upgrades with STARTTLS when the server offers it, and refuses to go on without
    it (PermanentError) unless `smtp.starttls_required` says plaintext is acceptable.
    """
    client = aiosmtplib.SMTP(hostname=smtp.host, port=smtp.port, use_tls=smtp.tls,
                             start_tls=False, tls_context=tls_context(), timeout=timeout)
    async with client:
        if not smtp.tls:
            try:
                await client.ehlo()
            except aiosmtplib.SMTPHeloError:
                await client.helo()  # a server without EHLO has no STARTTLS either
            if client.supports_extension("starttls"):
                await client.starttls()
            elif smtp.starttls_required:
                raise PermanentError(smtp.plaintext_refused("SMTP"))
        if smtp.token is not None:
            token = await _token(smtp)
            try:
                await client.auth_xoauth2(smtp.username, token)
            except aiosmtplib.SMTPAuthenticationError:
                # Refused before it lapsed (revoked early; a permission granted since it
                # was issued): once more with a token asked for anew.
                if not isinstance(smtp.token, Tokens):
                    raise
                smtp.token.reject(token)
                await client.auth_xoauth2(smtp.username, await _token(smtp))
        elif smtp.username:
            await client.login(smtp.username, smtp.password)
        yield client


async def _token(smtp: ServerUrl) -> str:
    """The URL's token, got off the event loop (it may wait on the identity provider). A
    refusal is retried like a relay's 4xx: the admin who mends it loses no mail."""
    assert smtp.token is not None
    try:
        return await asyncio.to_thread(smtp.token)
    except RefusedError as exc:
        raise TransientError(f"SMTP login: {exc}") from None


def smtp_error(exc: Exception, smtp: ServerUrl) -> Exception:
    """An aiosmtplib failure as TransientError (retry later) or PermanentError (give up)."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        error = TransientError if all(400 <= c < 500 for c in codes) else PermanentError
        return error(f"SMTP refused recipients: {exc}")
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError) and smtp.token is not None:
        # Exchange Online's 535 5.7.3 for an app not allowed to send as the mailbox, or a
        # token revoked since it was granted: retried, so the fix loses no mail.
        return TransientError(f"SMTP login to {smtp} refused the OAuth token ({exc.code} "
                              f"{exc.message}): check that the app may send as "
                              f"{smtp.username}")
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return PermanentError(f"SMTP login to {smtp} refused ({exc.code} {exc.message}): "
                              "check the user and password in ROUTER_SMTP_URL")
    if isinstance(exc, aiosmtplib.SMTPDataError) and _content_refused(exc.code, exc.message):
        return UnsendableError(f"SMTP {exc.code} {exc.message}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        error = TransientError if 400 <= exc.code < 500 else PermanentError
        return error(f"SMTP {exc.code} {exc.message}")
    return TransientError(f"SMTP {smtp.host}:{smtp.port} unreachable: {exc}")


_SMTP_FAILURES = (aiosmtplib.SMTPException, OSError, TimeoutError)
# What the email package raises writing out a mail it cannot write; aiosmtplib writes it
# before it says MAIL FROM, so nothing was sent and the connection is fine.
_WRITING_FAILURES = (AttributeError, TypeError, ValueError, LookupError)


def _unwritable(exc: Exception) -> UnsendableError:
    return UnsendableError(f"the mail cannot be written ({type(exc).__name__}: {exc})")


_STATUS = re.compile(r"\s*([245])\.(\d{1,3})\.(\d{1,3})\b")  # RFC 3463, e.g. 5.6.0


def _content_refused(code: int, text: str) -> bool:
    """Whether a 5xx answer to DATA refuses the mail's content (too big, bad syntax, spam)
    rather than its recipient (RFC 3463 5.1.x addressing, 5.2.x mailbox: another CSM may
    well take it). Without an enhanced code, 550, 551 and 553 name the recipient."""
    if code < 500:
        return False
    status = _STATUS.match(text)
    if status is None:
        return code not in (550, 551, 553)
    subject, detail = status[2], status[3]
    return subject not in ("1", "2") or (subject, detail) == ("2", "3")  # 5.2.3: too long


class Mailer:
    """One SMTP connection kept open across sends, on an event loop of its own.

    Opening a connection (and STARTTLS, and AUTH) for every forward cost more than the
    forward itself. A connection idle for a while is checked with NOOP before it is used
    again; one that fails is dropped, and the next send opens a fresh one.
    """

    def __init__(self, smtp: ServerUrl, timeout: float = 60, idle_check: float = 5) -> None:
        self.smtp, self.timeout, self.idle_check = smtp, timeout, idle_check
        self._runner = asyncio.Runner()
        self._session: contextlib.AbstractAsyncContextManager[aiosmtplib.SMTP] | None = None
        self._client: aiosmtplib.SMTP | None = None
        self._used_at = 0.0

    def send(self, message: EmailMessage, recipients: Sequence[str], *, sender: str) -> None:
        """Send one message; raise TransientError (retry) or PermanentError (give up), and
        UnsendableError, before sending, for a header line no relay takes."""
        check_lines(message)
        self._runner.run(self._send(message, list(recipients), sender))

    def close(self) -> None:
        self._runner.run(self._drop())
        self._runner.close()

    async def _send(self, message: EmailMessage, recipients: list[str], sender: str) -> None:
        try:
            client = await self._connected()
            await client.send_message(message, sender=sender, recipients=recipients)
        except _SMTP_FAILURES as exc:
            if not isinstance(exc, aiosmtplib.SMTPResponseException) or exc.code >= 421:
                await self._drop()  # the connection is suspect: start afresh next time
            raise smtp_error(exc, self.smtp) from None
        except _WRITING_FAILURES as exc:
            raise _unwritable(exc) from None
        finally:
            self._used_at = time.monotonic()

    async def _connected(self) -> aiosmtplib.SMTP:
        if self._client is not None and time.monotonic() - self._used_at > self.idle_check:
            try:
                await self._client.noop()
            except _SMTP_FAILURES:
                await self._drop()
        if self._client is None:
            session = smtp_session(self.smtp, self.timeout)
            self._client = await session.__aenter__()
            self._session = session
        return self._client

    async def _drop(self) -> None:
        session, self._session, self._client = self._session, None, None
        if session is not None:
            with contextlib.suppress(*_SMTP_FAILURES):
                await session.__aexit__(None, None, None)


_mailers: dict[ServerUrl, Mailer] = {}


def mailer(smtp: ServerUrl) -> Mailer:
    """This process's Mailer for `smtp`, made on first use."""
    found = _mailers.get(smtp)
    if found is None:
        found = _mailers[smtp] = Mailer(smtp)
    return found
