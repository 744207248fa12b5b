"""The Support handoff: what a handler receives, and the default handler that mails Support.

Teams with a ticket system plug in their own handler with
`ROUTER_SUPPORT_HANDLER=package.module:function`; it is called as
`function(handoff, settings)` on the worker and should raise to be retried.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from csm_router.config import Address, Settings
from csm_router.core.message import Inbound
from csm_router.core.rules.automatic import OWN_HEADER
from csm_router.errors import PermanentError
from csm_router.mail.headers import header_address
from csm_router.mail.outbound import (
    EarlierMessage,
    attach_originals,
    mailer,
    render,
    stamp,
)

Handler = Callable[["SupportHandoff", Settings], None]


@dataclass(frozen=True)
class SupportHandoff:
    """Everything Support needs so the customer never repeats themselves."""

    ref: str  # "CS-1042"
    customer: Address
    account: str
    subject: str
    why: str  # why it is technical, or who handed it over
    message: Inbound  # the message being handed over, with attachments
    csm: str | None = None  # the thread's CSM, if any
    history: tuple[str, ...] = ()  # one line per event of the thread
    earlier_messages: tuple[EarlierMessage, ...] = field(default_factory=tuple)
    message_id: str = ""  # the handoff's own Message-ID: a repeat is recognisably the same


def load_handler(spec: str) -> Handler:
    """Import `package.module:function`; raise PermanentError naming what is missing."""
    module_name, _, function = spec.partition(":")
    try:
        handler = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as exc:
        raise PermanentError(f"ROUTER_SUPPORT_HANDLER {spec}: {exc}") from None
    if not callable(handler):
        raise PermanentError(f"ROUTER_SUPPORT_HANDLER {spec} is not a function")
    return handler  # type: ignore[no-any-return]


def mail_support(handoff: SupportHandoff, settings: Settings) -> None:
    """The default handler: mail ROUTER_SUPPORT_ADDRESS, the customer as Reply-To."""
    support = settings.support_address
    if support is None:
        raise PermanentError("ROUTER_SUPPORT_ADDRESS is not set")
    msg = handoff.message
    alias = settings.alias
    out = stamp(
        sender=f"{handoff.customer.name or handoff.customer.address} via "
        f"{alias.name or alias.address}",
        alias=alias,
        to=str(support),
        subject=f"[{handoff.ref}] {handoff.subject or '(no subject)'}",
        message_id=handoff.message_id,
        kind=f"support {handoff.ref}",
    )
    out["Reply-To"] = [
        header_address(handoff.customer.address, handoff.customer.name),
        header_address(alias.address, alias.name),
    ]
    out.set_content(render(
        "support.txt.j2",
        ref=handoff.ref,
        customer=str(handoff.customer),
        account=handoff.account,
        why=handoff.why,
        csm=handoff.csm,
        alias=alias.address,
        attachments=[a.filename for a in msg.attachments],
        history=handoff.history,
        earlier_messages=handoff.earlier_messages,
        date=msg.header("Date") or "(no date)",
        subject=msg.subject or "(no subject)",
        text=msg.text.strip(),
    ), cte="quoted-printable")
    attach_originals(out, msg.attachments)
    assert OWN_HEADER in out
    mailer(settings.required_smtp()).send(out, [support.address], sender=alias.address)
