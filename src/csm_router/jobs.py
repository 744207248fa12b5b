"""RQ entry points, thin: load what the job names, render, send, record."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from csm_router import dispatch
from csm_router.config import PoolMember, load_settings
from csm_router.dispatch import Runtime
from csm_router.errors import PermanentError
from csm_router.message import MalformedMessageError, parse
from csm_router.outbound import (
    EarlierThread,
    forward_message_id,
    render_forward,
    render_notice,
    send,
)
from csm_router.store import key, text
from csm_router.threads import format_ref

log = logging.getLogger(__name__)

SENT_TTL_SECONDS = 90 * 86400
_runtime: Runtime | None = None


def configure(rt: Runtime | None) -> None:
    """Set the runtime jobs use (the worker does this once at start-up; None forgets it)."""
    global _runtime
    _runtime = rt


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:  # a plain `rq worker` that did not go through `csm-router worker`
        _runtime = Runtime.from_settings(load_settings())
    return _runtime


def deliver(msgkey: str, owner: str, why: str = "") -> str:
    """Forward one routed message to `owner`'s own inbox, once."""
    rt = runtime()
    store, settings = rt.store, rt.settings
    record = store.message(msgkey)
    if not record.get("ref"):
        raise PermanentError(f"message {msgkey} has no recorded thread")
    ref = int(record["ref"])
    alias = settings.alias
    message_id = forward_message_id(msgkey, owner, alias.domain)
    if rt.redis.exists(key("sent", message_id)):
        return f"already sent {message_id}"
    raw = store.load_raw(msgkey)
    if raw is None:
        raise PermanentError(f"CS-{ref}: the raw message {msgkey} has expired from Redis")
    try:
        msg = parse(raw, max_bytes=settings.max_message_bytes)
    except MalformedMessageError as exc:
        raise PermanentError(f"CS-{ref}: {exc}") from None
    thread = store.thread(ref)
    member = settings.member(owner) or PoolMember(owner)
    due = datetime.fromtimestamp(float(thread["due"]), UTC) if thread.get("due") else None
    previous_key = key("thread", ref, "forwards", owner)
    previous = [text(p) for p in rt.redis.lrange(previous_key, -10, -1)]
    forward = render_forward(
        msg,
        ref=ref,
        owner=member,
        alias=alias,
        why=why or record.get("why", ""),
        message_id=message_id,
        due=due,
        sla_minutes=settings.first_response_minutes,
        earlier=_earlier_threads(rt, thread.get("account", ""), ref),
        previous=previous,
    )
    asyncio.run(send(forward, settings.required_smtp(), [owner], sender=alias.address))
    with rt.redis.pipeline() as pipe:
        pipe.set(key("sent", message_id), 1, ex=SENT_TTL_SECONDS)
        pipe.set(key("msgid", message_id), ref)
        pipe.rpush(previous_key, message_id)
        pipe.hset(key("msg", msgkey), "state", "delivered")
        pipe.execute()
    log.info("%s %s forwarded to %s as %s", format_ref(ref), msg.message_id, owner, message_id)
    return f"sent {message_id}"


def _earlier_threads(rt: Runtime, account: str, ref: int, limit: int = 5) -> list[EarlierThread]:
    if not account:
        return []
    refs = [int(text(r)) for r in rt.redis.zrevrange(key("account", account), 0, limit)]
    out = []
    for other in refs:
        if other == ref:
            continue
        t = rt.store.thread(other)
        out.append(EarlierThread(format_ref(other), t.get("subject", ""),
                                 t.get("owner", ""), t.get("state", "")))
    return out[:limit]


def notify_overflow(ref: int) -> str:
    """Tell the overflow address that a thread is held because nobody can take it."""
    rt = runtime()
    settings = rt.settings
    lead = settings.overflow_address
    if lead is None:
        return "no overflow address"
    thread = rt.store.thread(ref)
    notice = render_notice(
        "overflow.txt.j2",
        sender=settings.alias,
        to=[str(lead)],
        subject=f"[{format_ref(ref)}] held: nobody in the pool can take it",
        domain=settings.alias.domain,
        ref=format_ref(ref),
        customer=thread.get("customer", ""),
        subject_line=thread.get("subject", ""),
    )
    asyncio.run(send(notice, settings.required_smtp(), [lead.address],
                     sender=settings.alias.address))
    log.info("%s held; told %s", format_ref(ref), lead.address)
    return "told"


def release_held() -> int:
    """Maintenance: hand held threads to CSMs who are back or have room."""
    return dispatch.release_held(runtime())
