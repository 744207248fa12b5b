"""The Support handoff as outbox kinds: the handoff, the customer's note, the CSM's copy.

Each is an entry of its own, owed with the decision (lua/owe.lua `owe_support`): a
customer's mailbox refusing the note is a dead letter of its own and leaves the thread
with Support, who have the request.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from csm_router.config import Address
from csm_router.core.threads import format_ref, subject_with_ref
from csm_router.mail.outbound import event_line, message_id_for, render_notice
from csm_router.runtime import Runtime
from csm_router.sends import once
from csm_router.sends.context import load_message, runtime, thread_history
from csm_router.sends.once import NotYetSafeError, send_mail_once, send_once
from csm_router.state.store import KEEP_SECONDS, key, text
from csm_router.support import SupportHandoff, load_handler

log = logging.getLogger(__name__)

HANDOFF_WAIT_SECONDS = 10.0



def hand_to_support(msgkey: str, ref: int, cause: str = "", tell: bool = False) -> str:
    """Hand a message to Support (the configured handler), once.

    `tell` comes only with entries owed before the note and the copy had entries of their
    own: those still send both here.
    """
    rt = runtime()
    store, settings = rt.store, rt.settings
    msg = load_message(rt, msgkey, ref)
    thread = store.thread(ref)
    events = store.events(ref)
    why = _why(events)
    handoff = SupportHandoff(
        ref=format_ref(ref),
        customer=Address(msg.sender, msg.sender_name),
        account=msg.account,
        subject=thread.get("subject") or msg.subject,
        why=why,
        message=msg,
        csm=thread.get("owner") or None,
        history=tuple(event_line(e) for e in events),
        earlier_messages=tuple(thread_history(rt, ref, msgkey)),
        message_id=message_id_for("support", msgkey, cause, domain=settings.alias.domain),
    )
    handler = load_handler(settings.support_handler)
    send_once(rt, handoff.message_id, lambda: handler(handoff, settings), writes=[
        ["SET", key("msgid", handoff.message_id), ref, "EX", settings.kept(KEEP_SECONDS)],
        ["HSET", key("msg", msgkey), "state", "delivered"],
    ], finish=not tell)
    log.info("%s %s handed to Support (%s)", handoff.ref, msg.message_id, why)
    if not tell:
        return f"handed {handoff.ref} to Support"
    support_note(msgkey, ref, cause, finish=False)
    if handoff.csm:
        support_copy(msgkey, ref, cause, handoff.csm, finish=False)
    return f"handed {handoff.ref} to Support; customer told"


def support_note(msgkey: str, ref: int, cause: str = "", handoff: str = "", *,
                 finish: bool = True) -> str:
    """Tell the customer that Support has their request, under its reference, once the
    handoff (entry `handoff`) went through.

    The sender is not verified: the note echoes neither their display name nor their
    subject (a forged From must not carry text to a third party), and a sender gets at
    most a few automatic notes a day.
    """
    rt = runtime()
    alias = rt.settings.alias
    msg = load_message(rt, msgkey, ref)
    message_id = message_id_for("note", msgkey, cause, domain=alias.domain)
    if once.already_sent(rt, message_id):
        return f"already sent {message_id}"
    if not _handed_over(rt, handoff):
        return f"not sent: the handoff of {format_ref(ref)} failed"
    if not note_allowed(rt, message_id, msg.sender):
        return f"not sent: {msg.sender} had enough automatic notes today"
    note = render_notice(
        "support_customer_note.txt.j2", sender=alias, to=[msg.sender],
        subject=subject_with_ref("Your request is with our Support team", ref),
        message_id=message_id, in_reply_to=msg.message_id, name=None, ref=format_ref(ref),
        alias_name=alias.name or alias.address,
    )
    note.replace_header("Auto-Submitted", "auto-replied")
    send_mail_once(rt, note, [msg.sender], writes=[
        ["SET", key("msgid", message_id), ref, "EX", rt.settings.kept(KEEP_SECONDS)]],
        finish=finish)
    return f"told {msg.sender} that Support has {format_ref(ref)}"


def support_copy(msgkey: str, ref: int, cause: str = "", csm: str = "", handoff: str = "",
                 *, finish: bool = True) -> str:
    """Tell the thread's CSM that it went to Support, and why (once it did)."""
    rt = runtime()
    if not _handed_over(rt, handoff):
        return f"not sent: the handoff of {format_ref(ref)} failed"
    settings = rt.settings
    alias = settings.alias
    msg = load_message(rt, msgkey, ref)
    copy = render_notice(
        "support_csm_copy.txt.j2", sender=alias, to=[csm],
        subject=f"[{format_ref(ref)}] with Support: {msg.subject}",
        message_id=message_id_for("support-copy", msgkey, cause, csm, domain=alias.domain),
        ref=format_ref(ref), customer=str(Address(msg.sender, msg.sender_name)),
        support=str(settings.support_address), why=_why(rt.store.events(ref)),
        text=msg.fresh_text.strip(),
    )
    send_mail_once(rt, copy, [csm], finish=finish)
    return f"told {csm} that {format_ref(ref)} is with Support"


def note_allowed(rt: Runtime, message_id: str, to: str) -> bool:
    """Whether automatic note `message_id` may go to `to` today: staff (the pool, Support)
    always, anyone else a few a day (outbox.NOTES_PER_SENDER_PER_DAY)."""
    settings = rt.settings
    support = settings.support_address
    if settings.member(to) is not None or (support is not None and support.address == to.lower()):
        return True
    if rt.outbox.note_allowed(message_id, to, datetime.now(UTC).date().isoformat()):
        return True
    log.warning("%s: not sent to %s, who had the most automatic notes a day already",
                message_id, to)
    return False


def _handed_over(rt: Runtime, handoff: str) -> bool:
    """Whether entry `handoff` went through; raises NotYetSafeError while it is pending."""
    if not handoff:
        return True  # sent along with the handoff itself (an entry owed before 'handoff')
    state = text(rt.redis.hget(key("outbox", "e", handoff), "state"))
    if state == "pending":
        raise NotYetSafeError(f"waits for the handoff {handoff}", delay=HANDOFF_WAIT_SECONDS)
    return state == "done"  # dead (the thread went back), or dropped and gone


def _why(events: list[dict[str, object]]) -> str:
    return next((str(e.get("why", "")) for e in reversed(events)
                 if e.get("event") in ("new-support", "to-support")), "")
