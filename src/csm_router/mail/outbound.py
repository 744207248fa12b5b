"""Outbound mail: render every message the product writes, and send it with aiosmtplib."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from email.message import EmailMessage
from email.utils import format_datetime
from importlib import resources
from pathlib import Path
from typing import Any, cast

from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    StrictUndefined,
    TemplateSyntaxError,
)
from jinja2.sandbox import SandboxedEnvironment

from csm_router.config import Address, ConfigError, PoolMember
from csm_router.core.message import Attachment, Inbound
from csm_router.core.rules.automatic import OWN_HEADER
from csm_router.core.threads import format_ref, subject_with_ref
from csm_router.errors import UnsendableError
from csm_router.mail.headers import (
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
from csm_router.mail.keyed import forward_hash
from csm_router.mail.safehtml import safe_html
from csm_router.mail.smtp import Mailer as Mailer
from csm_router.mail.smtp import mailer as mailer
from csm_router.mail.smtp import smtp_error as smtp_error
from csm_router.mail.smtp import smtp_session as smtp_session
from csm_router.mail.smtp import tls_context


def template_environment(override: Path | None = None, **options: Any) -> Environment:
    """The templates: an admin's override folder first (sandboxed), then the shipped ones.

    By default as mail needs them: customer text is escaped in HTML, plain text stays as
    is; `options` (e.g. `autoescape=True` for web pages) go to the environment.
    """
    shipped = FileSystemLoader(str(resources.files("csm_router.mail") / "templates"))
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


def check_templates(override: Path | None) -> list[str]:
    """Every problem with the templates a process may render (the shipped ones and the
    overrides in `override`), one line each: the file, its line, what is wrong."""
    environment = template_environment(override)
    shipped = set(template_environment().list_templates())
    problems = []
    if override is not None:
        problems += [f"{path.name}: no such template (the shipped ones: "
                     f"{', '.join(sorted(shipped))})"
                     for path in sorted(override.glob("*.j2")) if path.name not in shipped]
    for name in sorted(shipped):
        try:
            environment.get_template(name)
        except TemplateSyntaxError as exc:
            where = _shown_path(exc.filename or name, override)
            problems.append(f"{where} line {exc.lineno}: {exc.message}")
    return problems


def require_templates(override: Path | None) -> None:
    """Compile every template now: a broken one stops the process at start, named in one
    line, rather than fail each mail that needs it."""
    if problems := check_templates(override):
        raise ConfigError("ROUTER_TEMPLATES_DIR" if override else "templates",
                          "; ".join(problems))


def _shown_path(filename: str, override: Path | None) -> str:
    """An override by its path (the admin's file), a shipped template by its name."""
    if override is not None and Path(filename).parent == override:
        return filename
    return Path(filename).name


def warm_up() -> None:
    """Build the TLS context and compile every template now, in a worker's parent process,
    so each forked job inherits them instead of paying for them again."""
    tls_context()
    for name in _templates.list_templates():
        _templates.get_template(name)


def render(template: str, **context: object) -> str:
    """Render one of `templates/` with `context`.

    A template that compiled but fails on these values (an undefined name or filter in
    a branch not compiled before, the sandbox refusing) makes the mail unsendable: one
    line naming the file and line, and the send is dead-lettered, never retried.
    """
    compiled = _templates.get_template(template)
    try:
        return compiled.render(**context)
    except Exception as exc:
        raise UnsendableError(f"template {failing_line(exc, template)} cannot be rendered "
                              f"({type(exc).__name__}: {str(exc)[:200]})") from exc


def failing_line(exc: BaseException, template: str) -> str:
    """`file line N` of the innermost template frame of `exc`'s traceback (Jinja maps its
    frames to template lines), else the template's name."""
    found = template
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith(".j2"):
            found = f"{filename} line {tb.tb_lineno}"
        tb = tb.tb_next
    return found


def when(epoch: float | str | None, zone: tzinfo | None = None) -> str:
    """An epoch time as people read it in mail and on the command line, in `zone` (UTC
    unless given) and named by it: `2026-12-02 17:05 CET`; "-" for none."""
    if not epoch:
        return "-"
    return datetime.fromtimestamp(float(epoch), zone or UTC).strftime("%Y-%m-%d %H:%M %Z")


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
    language: str = "",
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
    _address_replies(out, msg, alias, reply_alias)
    _answer_original(out, msg, previous)
    customer = str(Address(msg.sender, msg.sender_name))
    context = render(
        "forward_context.txt.j2",
        ref=f"[{format_ref(ref)}]",
        customer=customer,
        account=msg.account,
        language=language,
        why=why,
        due=due.strftime("%Y-%m-%d %H:%M UTC") if due else None,
        sla_minutes=sla_minutes,
        earlier=earlier,
        history=history,
        alias=alias.address,
        attachments=[a.filename for a in msg.attachments if a.filename],
    ).rstrip("\n") + "\n"
    _carry_original(out, msg, context, customer)
    check_lines(out)
    return out


def _address_replies(out: EmailMessage, msg: Inbound, alias: Address,
                     reply_alias: str | None) -> None:
    """A reply to the forward goes to the customer and to the alias (or to the CSM's reply
    address for the thread)."""
    out["Reply-To"] = [
        header_address(msg.sender, msg.sender_name),
        header_address(reply_alias or alias.address, alias.name),
    ]


def _answer_original(out: EmailMessage, msg: Inbound, previous: Sequence[str]) -> None:
    # The forward answers the customer's message: the CSM's plain Reply then threads under
    # it in the customer's client, the CSM's client keeps the thread's forwards together,
    # and anyone can tell which mail a forward carries.
    references = message_ids([*dict.fromkeys([*previous, msg.message_id])])
    if message_ids([msg.message_id]):
        out["In-Reply-To"] = msg.message_id
    if references:
        out["References"] = " ".join(references)


def _carry_original(out: EmailMessage, msg: Inbound, context: str, customer: str) -> None:
    """The body: the context block above the customer's text, their HTML and attachments."""
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
