"""Outbound mail: render every message the product writes, and send it with aiosmtplib."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import aiosmtplib
from jinja2 import Environment, PackageLoader, StrictUndefined

from csm_router.config import Address, PoolMember, ServerUrl
from csm_router.errors import PermanentError, TransientError
from csm_router.message import Inbound
from csm_router.rules.automatic import OWN_HEADER
from csm_router.threads import format_ref, subject_with_ref

_templates = Environment(
    loader=PackageLoader("csm_router", "templates"),
    undefined=StrictUndefined,
    autoescape=False,  # plain-text mail; nothing here is rendered as HTML
    keep_trailing_newline=True,
)


def render(template: str, **context: object) -> str:
    """Render one of `templates/` with `context`."""
    return _templates.get_template(template).render(**context)


def forward_message_id(msgkey: str, owner: str, domain: str) -> str:
    """Deterministic, so sending the same forward again is recognisably the same mail."""
    who = hashlib.sha256(owner.encode()).hexdigest()[:8]
    return f"<fwd.{msgkey}.{who}@{domain}>"


def _header_address(address: str, name: str = "") -> HeaderAddress:
    username, _, domain = address.partition("@")
    return HeaderAddress(display_name=name, username=username, domain=domain)


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
) -> EmailMessage:
    """The forward a CSM receives: reference, context block, original text and attachments."""
    out = EmailMessage()
    customer_name = msg.sender_name or msg.sender
    alias_name = alias.name or alias.address
    # Written quoted as PRODUCT.md shows it; the email package encodes non-ASCII names.
    display = f"{customer_name} via {alias_name}".replace("\\", "").replace('"', "")
    out["From"] = f'"{display}" <{alias.address}>'
    out["To"] = _header_address(owner.address, owner.name)
    out["Reply-To"] = [
        _header_address(msg.sender, msg.sender_name),
        _header_address(alias.address, alias.name),
    ]
    out["Subject"] = subject_with_ref(msg.subject or "(no subject)", ref)
    out["Date"] = format_datetime(datetime.now(UTC))
    out["Message-ID"] = message_id
    if previous:
        # The CSM's client threads all forwards of one thread together.
        out["In-Reply-To"] = previous[-1]
        out["References"] = " ".join(previous)
    out[OWN_HEADER] = f"forward {format_ref(ref)}"
    body = render(
        "forward.txt.j2",
        ref=f"[{format_ref(ref)}]",
        customer=str(Address(msg.sender, msg.sender_name)),
        account=msg.account,
        why=why,
        due=due.strftime("%Y-%m-%d %H:%M UTC") if due else None,
        sla_minutes=sla_minutes,
        earlier=earlier,
        alias=alias.address,
        attachments=[a.filename for a in msg.attachments],
        date=format_datetime(msg.date) if msg.date else "(no date)",
        subject=msg.subject or "(no subject)",
        text=msg.text.strip(),
    )
    out.set_content(body, cte="quoted-printable")
    for attachment in msg.attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        out.add_attachment(
            attachment.data,
            maintype=maintype or "application",
            subtype=subtype or "octet-stream",
            filename=attachment.filename,
        )
    return out


def render_notice(
    template: str,
    *,
    sender: Address,
    to: Sequence[str],
    subject: str,
    domain: str,
    **context: object,
) -> EmailMessage:
    """A short notice the product writes (overflow, confirmations) from a template."""
    out = EmailMessage()
    out["From"] = _header_address(sender.address, sender.name)
    out["To"] = ", ".join(to)
    out["Subject"] = subject
    out["Date"] = format_datetime(datetime.now(UTC))
    out["Message-ID"] = make_msgid(domain=domain)
    out["Auto-Submitted"] = "auto-generated"  # RFC 3834: nobody should auto-reply to it
    out[OWN_HEADER] = template.split(".", 1)[0]
    out.set_content(render(template, **context))
    return out


async def send(
    message: EmailMessage,
    smtp: ServerUrl,
    recipients: Sequence[str],
    *,
    sender: str,
    timeout: float = 60,
) -> None:
    """Send one message; raise TransientError (retry) or PermanentError (give up)."""
    try:
        await aiosmtplib.send(
            message,
            sender=sender,
            recipients=list(recipients),
            hostname=smtp.host,
            port=smtp.port,
            username=smtp.username or None,
            password=smtp.password or None,
            use_tls=smtp.tls,
            start_tls=None if not smtp.tls else False,  # None: STARTTLS when offered
            tls_context=ssl.create_default_context(),
            timeout=timeout,
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        codes = [r.code for r in exc.recipients]
        error = TransientError if all(400 <= c < 500 for c in codes) else PermanentError
        raise error(f"SMTP refused recipients: {exc}") from None
    except aiosmtplib.SMTPResponseException as exc:
        error = TransientError if 400 <= exc.code < 500 else PermanentError
        raise error(f"SMTP {exc.code} {exc.message}") from None
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        raise TransientError(f"SMTP {smtp.host}:{smtp.port} unreachable: {exc}") from None
