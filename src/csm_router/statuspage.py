"""The lead's status page: what `/` and `/thread/CS-n` of `csm-router web` show, read
from Redis at request time, and the HTTP Basic check that guards them.

Everything here only reads. The views are plain dicts of display strings, so the
templates (`templates/status.html.j2`, `templates/thread.html.j2`) only lay them out.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from datetime import datetime
from typing import Any

from csm_router import pool
from csm_router.outbound import when
from csm_router.store import Store, key, text, text_hash
from csm_router.threads import REF_PREFIX, format_ref

RECENT = 50  # decisions the routers keep in csm:recent
LISTED = 100  # held or overdue threads listed; the page says how many more there are


def credentials_match(header: str | None, user: str, password: str) -> bool:
    """Whether an `Authorization: Basic ...` header names `user` and `password`.

    Both are compared in constant time, and both always, so the answer's timing tells
    nothing about which one was wrong.
    """
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    given_user, colon, given_password = decoded.partition(b":")
    user_ok = secrets.compare_digest(given_user, user.encode())
    password_ok = secrets.compare_digest(given_password, password.encode())
    return bool(colon) and user_ok and password_ok


def parse_ref(value: str) -> int | None:
    """`CS-1042`, `cs-1042` or `1042` as a thread number; None for anything else."""
    digits = value.strip().upper().removeprefix(f"{REF_PREFIX}-")
    if not digits.isascii() or not digits.isdigit() or len(digits) > 12:
        return None
    return int(digits)


def span(seconds: float) -> str:
    """A duration as people say it: `45 s`, `12 min`, `3 h 5 min`, `2 d 4 h`."""
    seconds = int(abs(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def relative(at: float, now: float) -> str:
    """`12 min ago` or `in 3 h`."""
    return f"in {span(at - now)}" if at > now else f"{span(now - at)} ago"


def _epoch(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


def _number(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _customer(thread: dict[str, str]) -> str:
    name, address = thread.get("customer_name", ""), thread.get("customer", "")
    return f"{name} <{address}>" if name and address else name or address


def _link(ref: int | None) -> dict[str, str] | None:
    """A reference as the templates link it (relative, so a path prefix in front works)."""
    return None if ref is None else {"ref": format_ref(ref), "href": f"thread/{format_ref(ref)}"}


def _scored(rows: list[tuple[Any, float]]) -> list[tuple[int, float]]:
    """A sorted set's (ref, score) pairs as read from Redis."""
    return [(int(text(ref)), float(score)) for ref, score in rows]


def _threads(store: Store, refs: list[int]) -> list[dict[str, str]]:
    pipe = store.redis.pipeline(transaction=False)
    for ref in refs:
        pipe.hgetall(key("thread", ref))
    return [text_hash(raw) for raw in pipe.execute()]


def overview(store: Store, now: float) -> dict[str, Any]:
    """Everything `/` shows: the pool, held and overdue threads, the latest decisions."""
    capacity = store.settings.max_open_per_csm
    members: list[dict[str, Any]] = []
    for row in pool.status(store, now):
        back = _epoch(row.back_on_shift)
        away_until = _epoch(row.away_until)
        members.append({
            "name": row.name or row.address,
            "address": row.address if row.name else "",
            "on_shift": "yes" if row.on_shift else (
                f"back {when(back)} ({relative(back, now)})" if back is not None else "no"),
            "off_shift": not row.on_shift,
            "away": (f"until {when(away_until)} ({relative(away_until, now)})"
                     if away_until is not None else "yes") if row.away else "",
            "weight": row.weight,
            "open": row.open,
            "full": bool(capacity) and row.open >= capacity,
            "overdue": row.overdue,
            "assigned_today": row.assigned_today,
        })

    redis = store.redis
    pipe = redis.pipeline(transaction=False)
    pipe.zrange(key("held"), 0, LISTED - 1, withscores=True)
    pipe.zcard(key("held"))
    pipe.zrangebyscore(key("due"), "-inf", now, start=0, num=LISTED, withscores=True)
    pipe.zcount(key("due"), "-inf", now)
    pipe.lrange(key("recent"), 0, RECENT - 1)
    held_raw, held_total, due_raw, due_total, recent_raw = pipe.execute()

    # Both lists' threads in one round trip: (ref, when held or due, the thread).
    held_rows, due_rows = _scored(held_raw), _scored(due_raw)
    threads = _threads(store, [ref for ref, _ in held_rows + due_rows])
    held = [{
        "link": _link(ref), "subject": thread.get("subject", ""),
        "customer": _customer(thread), "account": thread.get("account", ""),
        "since": when(since), "waiting": span(now - since),
    } for (ref, since), thread in zip(held_rows, threads, strict=False)]
    overdue = [{
        "link": _link(ref), "subject": thread.get("subject", ""),
        "customer": _customer(thread), "owner": thread.get("owner", ""),
        "due": when(due), "late": f"{span(now - due)} late",
    } for (ref, due), thread in zip(due_rows, threads[len(held_rows):], strict=True)]

    recent = []
    for raw in recent_raw:
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        at = _number(entry.get("at"))
        number = entry.get("ref")
        state, action = str(entry.get("state") or ""), str(entry.get("action") or "")
        recent.append({
            "at": when(at), "ago": relative(at, now) if at is not None else "",
            "link": _link(number if isinstance(number, int) else None),
            "subject": str(entry.get("subject") or ""),
            "outcome": "held" if state == "held" else action,
            "owner": str(entry.get("owner") or ""),
            "rule": str(entry.get("rule") or ""), "why": str(entry.get("why") or ""),
            "message_id": str(entry.get("message_id") or ""),
        })

    return {
        "now": when(now),
        "pool": members,
        "capacity": capacity,
        "available": sum(1 for m in members
                         if not m["off_shift"] and not m["away"] and not m["full"]),
        "open": sum(int(m["open"]) for m in members),
        "held": held, "held_total": int(held_total), "held_more": int(held_total) - len(held),
        "overdue": overdue, "overdue_total": int(due_total),
        "overdue_more": int(due_total) - len(overdue),
        "recent": recent,
    }


def thread_view(store: Store, ref: int, now: float) -> dict[str, Any] | None:
    """Everything `/thread/CS-n` shows, or None when there is no such thread."""
    thread = store.thread(ref)
    if not thread:
        return None
    events = []
    for event in store.events(ref):
        at = _number(event.get("at"))
        owner, previous = str(event.get("owner") or ""), str(event.get("previous") or "")
        events.append({
            "at": when(at), "ago": relative(at, now) if at is not None else "",
            "event": str(event.get("event") or ""),
            "owner": owner,
            "previous": previous if previous != owner else "",  # a move, not a stay
            "rule": str(event.get("rule") or ""), "why": str(event.get("why") or ""),
            "message_id": str(event.get("msg") or ""),
        })
    messages = []
    for record in store.messages(store.thread_messages(ref)):
        if not record:
            continue  # its record outlived by the thread (kept 400 days)
        at = _number(record.get("at"))
        messages.append({
            "at": when(at), "ago": relative(at, now) if at is not None else "",
            "subject": record.get("subject", ""), "owner": record.get("owner", ""),
            "rule": record.get("rule", ""), "message_id": record.get("message_id", ""),
        })
    due = _number(thread.get("due"))
    facts = [
        ("customer", _customer(thread)),
        ("account", thread.get("account", "")),
        ("owner", thread.get("owner", "")),
        ("state", thread.get("state", "")),
        ("created", when(thread.get("created"))),
        ("due", f"{when(due)} ({relative(due, now)})" if due is not None else ""),
        ("first response", when(thread.get("first_response"))
         if thread.get("first_response") else ""),
    ]
    return {
        "now": when(now),
        "ref": format_ref(ref),
        "subject": thread.get("subject", ""),
        "facts": [(name, value or "-") for name, value in facts],
        "late": due is not None and due <= now,
        "events": events,
        "messages": messages,
    }
