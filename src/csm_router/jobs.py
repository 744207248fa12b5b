"""RQ entry points, thin: load what the job names, render, send once, record."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import ParamSpec, TypeVar

from rq import get_current_job

from csm_router import dispatch
from csm_router.classify import classify
from csm_router.config import Address, PoolMember, load_settings
from csm_router.dispatch import Runtime
from csm_router.errors import PermanentError
from csm_router.message import Inbound, MalformedMessageError, parse
from csm_router.outbound import (
    EarlierMessage,
    EarlierThread,
    event_line,
    forward_message_id,
    message_id_for,
    render_forward,
    render_notice,
    send,
    when,
)
from csm_router.store import KEEP_SECONDS, key, text
from csm_router.support import SupportHandoff, load_handler
from csm_router.threads import format_ref, reply_subject, subject_with_ref

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")
SENT_TTL_SECONDS = 90 * 86400
_runtime: Runtime | None = None


def fail_fast(func: Callable[P, R]) -> Callable[P, R]:
    """A PermanentError ends the job at once: retrying a 5xx or an expired message is no use.

    The job then lands in RQ's failed registry, which `csm-router status` counts.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except PermanentError:
            job = get_current_job()
            if job is not None:
                job.retries_left = 0
            raise

    return wrapper


def configure(rt: Runtime | None) -> None:
    """Set the runtime jobs use (the worker does this once at start-up; None forgets it)."""
    global _runtime
    _runtime = rt


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:  # a plain `rq worker` that did not go through `csm-router worker`
        _runtime = Runtime.from_settings(load_settings())
    return _runtime



def _already_sent(rt: Runtime, message_id: str) -> bool:
    return bool(rt.redis.exists(key("sent", message_id)))


def _once(rt: Runtime, message_id: str, action: Callable[[], object]) -> bool:
    """Run `action` unless the mail `message_id` went out before; answers whether it ran."""
    if _already_sent(rt, message_id):
        return False
    action()
    rt.redis.set(key("sent", message_id), 1, ex=SENT_TTL_SECONDS)
    return True


def _send(rt: Runtime, message: EmailMessage, recipients: list[str]) -> None:
    settings = rt.settings
    asyncio.run(send(message, settings.required_smtp(), recipients,
                     sender=settings.alias.address))


def _send_once(rt: Runtime, message: EmailMessage, recipients: list[str]) -> bool:
    """Send unless a mail with this Message-ID went out before; answers whether it sent."""
    return _once(rt, str(message["Message-ID"]), lambda: _send(rt, message, recipients))


def _load(rt: Runtime, msgkey: str, ref: int) -> Inbound:
    raw = rt.store.load_raw(msgkey)
    if raw is None:
        raise PermanentError(f"CS-{ref}: the raw message {msgkey} has expired from Redis")
    try:
        return parse(raw, max_bytes=rt.settings.max_message_bytes)
    except MalformedMessageError as exc:
        raise PermanentError(f"CS-{ref}: {exc}") from None


@fail_fast
def deliver(msgkey: str, owner: str, why: str = "", cause: str = "") -> str:
    """Forward one routed message to `owner`'s own inbox, once (per `cause`)."""
    rt = runtime()
    store, settings = rt.store, rt.settings
    record = store.message(msgkey)
    if not record.get("ref"):
        raise PermanentError(f"message {msgkey} has no recorded thread")
    ref = int(record["ref"])
    alias = settings.alias
    message_id = forward_message_id(msgkey, owner, alias.domain, cause)
    if _already_sent(rt, message_id):
        return f"already sent {message_id}"
    msg = _load(rt, msgkey, ref)
    thread = store.thread(ref)
    why = why or record.get("why", "")
    if settings.support_address is not None and record.get("rule") != "technical":
        found = classify(msg, rt.support_rules)
        if found.technical:
            why += f". Looks technical ({found.explain()}): reply with #support to hand it over"
    previous_key = key("thread", ref, "forwards", owner)
    previous = [text(p) for p in rt.redis.lrange(previous_key, -10, -1)]
    forward = render_forward(
        msg,
        ref=ref,
        owner=settings.member(owner) or PoolMember(owner),
        alias=alias,
        why=why,
        message_id=message_id,
        due=datetime.fromtimestamp(float(thread["due"]), UTC) if thread.get("due") else None,
        sla_minutes=settings.first_response_minutes,
        earlier=_earlier_threads(rt, thread.get("account", ""), ref),
        previous=previous,
        # Someone new to the thread reads what was said so far: nobody asks the
        # customer to repeat themselves.
        history=() if previous else _thread_history(rt, ref, msgkey),
    )
    _send(rt, forward, [owner])  # checked not sent above, before rendering
    with rt.redis.pipeline() as pipe:
        pipe.set(key("sent", message_id), 1, ex=SENT_TTL_SECONDS)
        pipe.set(key("msgid", message_id), ref, ex=KEEP_SECONDS)
        pipe.rpush(previous_key, message_id)
        pipe.hset(key("msg", msgkey), "state", "delivered")
        pipe.execute()
    log.info("%s %s forwarded to %s as %s", format_ref(ref), msg.message_id, owner, message_id)
    return f"sent {message_id}"


def _thread_history(
    rt: Runtime, ref: int, current: str, limit: int = 5, max_chars: int = 2000
) -> list[EarlierMessage]:
    """The thread's messages before `current` (customer's and CSMs'), newest `limit`."""
    keys = rt.store.thread_messages(ref)
    if current in keys:
        keys = keys[: keys.index(current)]
    history = []
    for other in keys[-limit:]:
        raw = rt.store.load_raw(other)
        if raw is None:
            continue  # expired: the events in `csm-router thread` still tell the story
        try:
            earlier = parse(raw, max_bytes=rt.settings.max_message_bytes)
        except MalformedMessageError:
            continue
        body = earlier.fresh_text.strip()
        if len(body) > max_chars:
            body = body[:max_chars] + " [...]"
        history.append(EarlierMessage(earlier.header("Date") or "", earlier.sender, body))
    return history


def _earlier_threads(rt: Runtime, account: str, ref: int, limit: int = 5) -> list[EarlierThread]:
    if not account:
        return []
    refs = [int(text(r)) for r in rt.redis.zrevrange(key("account", account), 0, limit)]
    refs = [other for other in refs if other != ref][:limit]
    with rt.redis.pipeline(transaction=False) as pipe:
        for other in refs:
            pipe.hmget(key("thread", other), "subject", "owner", "state")
        rows = pipe.execute()
    return [EarlierThread(format_ref(other), *(text(v) for v in row))
            for other, row in zip(refs, rows, strict=True)]


@fail_fast
def hand_to_support(msgkey: str, ref: int, cause: str = "", tell: bool = True) -> str:
    """Hand a message to Support (the configured handler); with `tell`, the thread has
    just moved there, so the customer gets a note and the CSM a copy."""
    rt = runtime()
    store, settings = rt.store, rt.settings
    alias = settings.alias
    msg = _load(rt, msgkey, ref)
    thread = store.thread(ref)
    events = store.events(ref)
    csm = thread.get("owner") or None
    why = next((e.get("why", "") for e in reversed(events)
                if e.get("event") in ("new-support", "to-support")), "")
    handoff = SupportHandoff(
        ref=format_ref(ref),
        customer=Address(msg.sender, msg.sender_name),
        account=msg.account,
        subject=thread.get("subject") or msg.subject,
        why=why,
        message=msg,
        csm=csm,
        history=tuple(event_line(e) for e in events),
        earlier_messages=tuple(_thread_history(rt, ref, msgkey)),
        message_id=message_id_for("support", msgkey, cause, domain=alias.domain),
    )
    _once(rt, handoff.message_id, lambda: load_handler(settings.support_handler)(handoff, settings))
    rt.store.link_message_id(handoff.message_id, ref)
    store.redis.hset(key("msg", msgkey), "state", "delivered")
    log.info("%s %s handed to Support (%s)", handoff.ref, msg.message_id, why)
    if not tell:
        return f"handed {handoff.ref} to Support"

    subject = subject_with_ref(reply_subject(msg.subject), ref)
    note = render_notice(
        "support_customer_note.txt.j2", sender=alias, to=[str(handoff.customer)],
        subject=subject, message_id=message_id_for("note", msgkey, cause, domain=alias.domain),
        in_reply_to=msg.message_id, name=msg.sender_name, ref=handoff.ref,
        alias_name=alias.name or alias.address,
    )
    note.replace_header("Auto-Submitted", "auto-replied")
    _send_once(rt, note, [msg.sender])
    rt.store.link_message_id(str(note["Message-ID"]), ref)
    if csm:
        copy = render_notice(
            "support_csm_copy.txt.j2", sender=alias, to=[csm],
            subject=f"[{handoff.ref}] with Support: {msg.subject}",
            message_id=message_id_for("support-copy", msgkey, cause, csm, domain=alias.domain),
            ref=handoff.ref, customer=str(handoff.customer), support=str(settings.support_address),
            why=why, text=msg.fresh_text.strip(),
        )
        _send_once(rt, copy, [csm])
    return f"handed {handoff.ref} to Support; customer told"


@fail_fast
def send_notice(msgkey: str) -> str:
    """Send the confirmation or error recorded for a command in message `msgkey`."""
    rt = runtime()
    record = rt.store.message(msgkey)
    notice = json.loads(record.get("followup") or "{}").get("notice")
    if not notice:
        return "nothing to send"
    alias = rt.settings.alias
    reply = render_notice(
        "notice.txt.j2", sender=alias, to=[notice["to"]], subject=notice["subject"],
        message_id=message_id_for("notice", msgkey, domain=alias.domain),
        in_reply_to=notice.get("in_reply_to"), text=notice["text"],
    )
    _send_once(rt, reply, [notice["to"]])
    return f"told {notice['to']}"


@fail_fast
def notify_overflow(ref: int) -> str:
    """Tell the overflow address that a thread is held because nobody can take it."""
    rt = runtime()
    settings = rt.settings
    lead = settings.overflow_address
    if lead is None:
        return "no overflow address"
    thread = rt.store.thread(ref)
    notice = render_notice(
        "overflow.txt.j2", sender=settings.alias, to=[str(lead)],
        subject=f"[{format_ref(ref)}] held: nobody in the pool can take it",
        message_id=message_id_for("overflow", ref, thread.get("created"),
                                  domain=settings.alias.domain),
        ref=format_ref(ref), customer=thread.get("customer", ""),
        subject_line=thread.get("subject", ""),
    )
    _send_once(rt, notice, [lead.address])
    log.info("%s held; told %s", format_ref(ref), lead.address)
    return "told"


@fail_fast
def remind(ref: int, owner: str, due: float) -> str:
    """Remind a CSM that a thread's first answer is nearly due."""
    rt = runtime()
    settings = rt.settings
    thread = rt.store.thread(ref)
    lead = settings.overflow_address
    notice = render_notice(
        "reminder.txt.j2", sender=settings.alias, to=[owner],
        subject=f"Reminder: [{format_ref(ref)}] is due at {when(due)}",
        message_id=message_id_for("remind", ref, due, domain=settings.alias.domain),
        ref=format_ref(ref), customer=thread.get("customer", ""), due=when(due),
        subject_line=thread.get("subject", ""), alias=settings.alias.address,
        lead=lead.address if lead else "the CS lead",
    )
    _send_once(rt, notice, [owner])
    return f"reminded {owner}"


@fail_fast
def escalate(ref: int, previous: str, owner: str, due: float) -> str:
    """Tell the lead, once, that a thread missed its first-response target."""
    rt = runtime()
    settings = rt.settings
    lead = settings.overflow_address
    if lead is None:
        log.warning("%s overdue and ROUTER_OVERFLOW_ADDRESS is not set", format_ref(ref))
        return "no lead to tell"
    thread = rt.store.thread(ref)
    notice = render_notice(
        "escalation.txt.j2", sender=settings.alias, to=[str(lead)],
        subject=f"Overdue: [{format_ref(ref)}] {thread.get('subject', '')}",
        message_id=message_id_for("escalate", ref, domain=settings.alias.domain),
        ref=format_ref(ref), customer=thread.get("customer", ""),
        subject_line=thread.get("subject", ""), previous=previous or "nobody", owner=owner,
        due=when(due),
    )
    _send_once(rt, notice, [lead.address])
    return f"told {lead.address}"


def sla_sweep(now: float | None = None, *, chained: bool = True) -> str:
    """Maintenance: remind, escalate, hand out held threads; then schedule the next sweep."""
    rt = runtime()
    if chained:
        rt.redis.delete(key("sweep", "scheduled"))
    now = now if now is not None else time.time()
    result = rt.store.sweep(now)
    for r in result["reminders"]:
        dispatch.enqueue_job(rt, dispatch.DELIVER, remind, r["ref"], r["owner"], r["due"],
                             kind="remind")
    for e in result["escalations"]:
        why = f"first response overdue with {e['previous'] or 'nobody'}: escalated to you"
        log.warning("CS-%s first response overdue with %s; moved to %s", e["ref"],
                    e["previous"], e["owner"] or "nobody")
        if e["owner"] and e["msg"]:
            dispatch.enqueue_delivery(rt, e["msg"], e["owner"], why, "escalated")
        dispatch.enqueue_job(rt, dispatch.DELIVER, escalate, e["ref"], e["previous"],
                             e["owner"], e["due"], kind="escalate")
    released = dispatch.release_held(rt)
    if chained:
        dispatch.ensure_sweep(rt)
    return (f"{len(result['reminders'])} reminded, {len(result['escalations'])} escalated, "
            f"{released} released")
