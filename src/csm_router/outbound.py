"""Outbound mail: render every message the product writes, and send it with aiosmtplib."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import re
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from importlib import resources
from pathlib import Path
from typing import Any, cast

import aiosmtplib
from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    StrictUndefined,
    TemplateSyntaxError,
)
from jinja2.sandbox import SandboxedEnvironment

from csm_router.config import Address, PoolMember, ServerUrl
from csm_router.errors import PermanentError, TransientError, UnsendableError
from csm_router.headers import (
    MAX_NAME,
    MAX_SUBJECT,
    check_lines,
    content_id,
    file_name,
    header_address,
    header_text,
    message_ids,
    recipients,
)
from csm_router.keyed import forward_hash
from csm_router.message import Attachment, Inbound
from csm_router.rules.automatic import OWN_HEADER
from csm_router.safehtml import safe_html
from csm_router.threads import format_ref, subject_with_ref


def template_environment(override: Path | None = None, **options: Any) -> Environment:
    """The templates: an admin's override folder first (sandboxed), then the shipped ones.

    By default as mail needs them: customer text is escaped in HTML, plain text stays as
    is; `options` (e.g. `autoescape=True` for web pages) go to the environment.
    """
    shipped = FileSystemLoader(str(resources.files("csm_router") / "templates"))
    loader: BaseLoader = shipped
    if override is not None:
        loader = ChoiceLoader([FileSystemLoader(str(override)), shipped])
    settings: dict[str, Any] = {
        "autoescape": lambda name: name is not None and ".html" in name,
        "keep_trailing_newline": True,
    }
    return SandboxedEnvironment(loader=loader, undefined=StrictUndefined,
                                **(settings | options))


_templates = template_environment()


def use_templates(override: Path | None) -> None:
    """Take templates from `override` (ROUTER_TEMPLATES_DIR) where it has them."""
    global _templates
    _templates = template_environment(override)


def check_templates(override: Path) -> list[str]:
    """Every problem with the templates in `override`, one line each (name, line, what)."""
    environment = template_environment(override)
    shipped = set(template_environment().list_templates())
    problems = []
    for path in sorted(override.glob("*.j2")):
        if path.name not in shipped:
            problems.append(f"{path.name}: no such template (the shipped ones: "
                            f"{', '.join(sorted(shipped))})")
            continue
        try:
            environment.get_template(path.name)
        except TemplateSyntaxError as exc:
            problems.append(f"{path.name} line {exc.lineno}: {exc.message}")
    return problems

@functools.cache
def tls_context() -> ssl.SSLContext:
    """The verifying TLS context, built once: loading the CA store costs tens of ms."""
    return ssl.create_default_context()


def warm_up() -> None:
    """Build the TLS context and compile every template now, in a worker's parent process,
    so each forked job inherits them instead of paying for them again."""
    tls_context()
    for name in _templates.list_templates():
        _templates.get_template(name)


def render(template: str, **context: object) -> str:
    """Render one of `templates/` with `context`."""
    return _templates.get_template(template).render(**context)


def when(epoch: float | str | None) -> str:
    """An epoch time as people read it in mail and on the command line; "-" for none."""
    if not epoch:
        return "-"
    return datetime.fromtimestamp(float(epoch), UTC).strftime("%Y-%m-%d %H:%M UTC")


def event_line(event: dict[str, Any]) -> str:
    """One event of a thread's history: when, what, to whom, by which rule and why."""
    owner = f" -> {event['owner']}" if event.get("owner") else ""
    rule = f" by {event['rule']}" if event.get("rule") else ""
    why = f" ({event['why']})" if event.get("why") else ""
    return f"{when(event.get('at'))}  {event.get('event')}{owner}{rule}{why}"


def forward_message_id(msgkey: str, owner: str, domain: str, cause: str = "", *,
                       secret: bytes) -> str:
    """Deterministic, so sending the same forward again is recognisably the same mail; keyed
    with `secret` (keyed.id_secret), so nobody can compute it from the customer's mail and
    claim it to re-point the thread."""
    return f"<fwd.{msgkey}.{forward_hash(secret, msgkey, owner, cause)}@{domain}>"


def stamp(
    *, sender: str, alias: Address, to: str, subject: str, message_id: str, kind: str
) -> EmailMessage:
    """A new message from the alias with the headers every mail the product writes has.

    `sender` is the display name, written quoted as PRODUCT.md shows it; the email package
    encodes non-ASCII names. `kind` goes into X-CSM-Router so a copy that comes back to
    the alias is recognised and never loops.
    """
    out = EmailMessage()
    display = header_text(sender.replace("\\", "").replace('"', ""), MAX_NAME)
    out["From"] = f'"{display}" <{alias.address}>'
    out["To"] = recipients(to)
    out["Subject"] = header_text(subject, MAX_SUBJECT)
    out["Date"] = format_datetime(datetime.now(UTC))
    out["Message-ID"] = message_id
    out[OWN_HEADER] = kind
    return out


@dataclass(frozen=True)
class EarlierMessage:
    """A message earlier in the same thread, as the next reader needs it."""

    date: str
    sender: str
    text: str


@dataclass(frozen=True)
class EarlierThread:
    ref: str
    subject: str
    owner: str
    state: str


def render_forward(
    msg: Inbound,
    *,
    ref: int,
    owner: PoolMember,
    alias: Address,
    why: str,
    message_id: str,
    due: datetime | None,
    sla_minutes: int,
    earlier: Sequence[EarlierThread] = (),
    previous: Sequence[str] = (),
    history: Sequence[EarlierMessage] = (),
    reply_alias: str | None = None,
) -> EmailMessage:
    """The forward a CSM receives: reference, context block, original text and attachments.

    `reply_alias` replaces the alias in Reply-To (the CSM's own reply address for the
    thread, when replies are proven by it rather than by Authentication-Results).
    """
    customer_name = header_text(msg.sender_name or msg.sender, MAX_NAME // 2)
    out = stamp(
        sender=f"{customer_name} via {alias.name or alias.address}",
        alias=alias,
        to=str(Address(owner.address, owner.name)),
        subject=subject_with_ref(msg.subject or "(no subject)", ref),
        message_id=message_id,
        kind=f"forward {format_ref(ref)}",
    )
    out["Reply-To"] = [
        header_address(msg.sender, msg.sender_name),
        header_address(reply_alias or alias.address, alias.name),
    ]
    # The forward answers the customer's message: the CSM's plain Reply then threads under
    # it in the customer's client, the CSM's client keeps the thread's forwards together,
    # and anyone can tell which mail a forward carries.
    references = message_ids([*dict.fromkeys([*previous, msg.message_id])])
    if message_ids([msg.message_id]):
        out["In-Reply-To"] = msg.message_id
    if references:
        out["References"] = " ".join(references)
    customer = str(Address(msg.sender, msg.sender_name))
    context = render(
        "forward_context.txt.j2",
        ref=f"[{format_ref(ref)}]",
        customer=customer,
        account=msg.account,
        why=why,
        due=due.strftime("%Y-%m-%d %H:%M UTC") if due else None,
        sla_minutes=sla_minutes,
        earlier=earlier,
        history=history,
        alias=alias.address,
        attachments=[a.filename for a in msg.attachments if a.filename],
    ).rstrip("\n") + "\n"
    original = {
        "context": context,
        "customer": customer,
        "date": format_datetime(msg.date) if msg.date else "(no date)",
        "subject": msg.subject or "(no subject)",
    }
    out.set_content(render("forward.txt.j2", text=msg.text.strip(), **original),
                    cte="quoted-printable")
    html_part = None
    if msg.html:
        # The customer's own formatting (tables, inline images) for clients that show HTML.
        out.add_alternative(render("forward.html.j2", original=safe_html(msg.html), **original),
                            subtype="html", cte="quoted-printable")
        html_part = cast(EmailMessage, out.get_payload()[1])  # type: ignore[index]
    attach_originals(out, msg.attachments, html_part)
    check_lines(out)
    return out


def attach_originals(
    out: EmailMessage, attachments: Sequence[Attachment], html: EmailMessage | None = None
) -> None:
    """Carry every original attachment; images the HTML shows inline stay inline with it.

    An image whose Content-ID no header can carry as it is goes as a plain attachment.
    """
    inline: list[Attachment] = []
    for a in attachments:
        cid = content_id(a.content_id)
        if html is None or cid is None:
            continue
        maintype, _, subtype = _content_type(a.content_type).partition("/")
        html.add_related(a.data, maintype=maintype or "application",
                         subtype=subtype or "octet-stream", cid=cid,
                         filename=file_name(a.filename) or None)
        inline.append(a)
    for a in attachments:
        if a in inline:
            continue
        maintype, _, subtype = _content_type(a.content_type).partition("/")
        out.add_attachment(a.data, maintype=maintype or "application",
                           subtype=subtype or "octet-stream",
                           filename=file_name(a.filename) or "attachment")


def _content_type(content_type: str) -> str:
    """How an original attachment is carried: as it was, but for a delivery status, which
    the email package can only write as parsed header blocks, never as the bytes we have."""
    return "text/plain" if content_type.endswith("delivery-status") else content_type


def render_notice(
    template: str,
    *,
    sender: Address,
    to: Sequence[str],
    subject: str,
    message_id: str,
    in_reply_to: str | None = None,
    **context: object,
) -> EmailMessage:
    """A short notice the product writes (overflow, confirmations, reminders) from a template."""
    out = stamp(sender=sender.name or sender.address, alias=sender, to=", ".join(to),
                subject=subject, message_id=message_id, kind=template.split(".", 1)[0])
    out["Auto-Submitted"] = "auto-generated"  # RFC 3834: nobody should auto-reply to it
    if in_reply_to and message_ids([in_reply_to]):
        out["In-Reply-To"] = in_reply_to
        out["References"] = in_reply_to
    out.set_content(render(template, **context))
    check_lines(out)
    return out


def message_id_for(kind: str, *parts: object, domain: str) -> str:
    """A deterministic Message-ID: the same notice sent again is recognisably the same."""
    digest = hashlib.sha256("\0".join(str(p) for p in parts).encode()).hexdigest()[:24]
    return f"<{kind}.{digest}@{domain}>"


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
        if smtp.username:
            await client.login(smtp.username, smtp.password)
        yield client


def smtp_error(exc: Exception, smtp: ServerUrl) -> Exception:
    """An aiosmtplib failure as TransientError (retry later) or PermanentError (give up)."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        error = TransientError if all(400 <= c < 500 for c in codes) else PermanentError
        return error(f"SMTP refused recipients: {exc}")
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


async def send(
    message: EmailMessage,
    smtp: ServerUrl,
    recipients: Sequence[str],
    *,
    sender: str,
    timeout: float = 60,
) -> None:
    """Send one message on a connection of its own; raise TransientError or PermanentError."""
    try:
        async with smtp_session(smtp, timeout) as client:
            await client.send_message(message, sender=sender, recipients=list(recipients))
    except _SMTP_FAILURES as exc:
        raise smtp_error(exc, smtp) from None
    except _WRITING_FAILURES as exc:
        raise _unwritable(exc) from None


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
