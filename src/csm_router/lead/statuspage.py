"""The lead's status page: what `/` of `csm-router web` shows, read from Redis at request
time, and the HTTP Basic check that guards it (`/thread/CS-n` is threadpage.py's).

Everything here only reads. The views are plain dicts of display strings, so the
templates (`templates/status.html.j2`, `templates/thread.html.j2`) only lay them out.
Times are the lead's (ROUTER_HOURS of the lead, else UTC), with UTC on hover.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from datetime import UTC, datetime, tzinfo
from typing import Any

from markupsafe import Markup

from csm_router.core.threads import format_ref
from csm_router.lead import poolstatus
from csm_router.lead.poolstatus import CsmStatus
from csm_router.mail.outbound import when
from csm_router.state.store import Store, key, text, text_hash

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


def duration(seconds: float | None) -> str:
    """A figure's duration, as the tables show it: `13 s`, `12 min`, `3 h 5 min`; "-" for
    none."""
    return span(seconds) if seconds is not None else "-"


def relative(at: float, now: float) -> str:
    """`12 min ago` or `in 3 h`."""
    return f"in {span(at - now)}" if at > now else f"{span(now - at)} ago"


def moment(epoch: float | str | None, zone: tzinfo | None) -> Markup:
    """An epoch time in the lead's `zone`, marked up with its UTC time for a hover and
    for machines: `<time datetime="2026-12-02T16:05:00Z" title="2026-12-02 16:05 UTC">`."""
    if not epoch:
        return Markup("-")
    utc = datetime.fromtimestamp(float(epoch), UTC)
    return Markup('<time datetime="{}" title="{}">{}</time>').format(
        utc.strftime("%Y-%m-%dT%H:%M:%SZ"), when(epoch), when(epoch, zone))


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



def _weekday_time(at: float, zone: tzinfo | None, now: float) -> str:
    """`Mon 09:00 CET` within the week ahead, else with its date."""
    local = datetime.fromtimestamp(at, zone or UTC)
    if at - now < 6 * 86400:
        return local.strftime("%a %H:%M %Z")
    return local.strftime("%a %Y-%m-%d %H:%M %Z")


def _names(rows: list[CsmStatus]) -> str:
    names = [r.name or r.address for r in rows]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def held_reason(rows: list[CsmStatus], capacity: int, zone: tzinfo | None,
                now: float) -> str:
    """Why held threads wait, from the pool's state now: who is away, off shift or full.

    A CSM counts once, by what keeps them longest: away, then off shift, then full.
    """
    away = [r for r in rows if r.away]
    off = [r for r in rows if not r.away and not r.on_shift]
    full = [r for r in rows if r.on_shift and not r.away and capacity and r.open >= capacity]
    if len(away) + len(off) + len(full) < len(rows):
        return "a CSM can take one now: they go out at the next pass"
    backs = [b for r in off if (b := _epoch(r.back_on_shift)) is not None]
    shift = (f"until {_weekday_time(min(backs), zone, now)}" if backs
             else "with no shift ahead")
    if len(away) == len(rows):
        returns = [u for r in away if (u := _epoch(r.away_until)) is not None]
        first = (f" (the first back {_weekday_time(min(returns), zone, now)})"
                 if len(returns) == len(away) else "")
        return f"everyone is away{first}"
    if len(off) == len(rows):
        return f"nobody on shift {shift}"
    if len(full) == len(rows):
        return f"everyone at capacity ({capacity} open each)"
    parts = []
    if away:
        parts.append(f"{_names(away)} away")
    if off:
        parts.append(f"{_names(off)} off shift {shift}")
    if full:
        parts.append(f"{_names(full)} at capacity ({capacity} open each)")
    return "; ".join(parts)


def _decision(entry: dict[str, Any], now: float, zone: tzinfo | None) -> dict[str, Any]:
    """One line of csm:recent as the page shows it."""
    at = _number(entry.get("at"))
    number = entry.get("ref")
    state, action = str(entry.get("state") or ""), str(entry.get("action") or "")
    outcome = state if state in ("held", "quarantined", "escalated") else action
    return {
        "at": moment(at, zone), "ago": relative(at, now) if at is not None else "",
        "link": _link(number if isinstance(number, int) else None),
        "subject": str(entry.get("subject") or ""),
        "outcome": outcome, "bad": outcome in ("held", "quarantined", "escalated"),
        "owner": str(entry.get("owner") or ""),
        "rule": str(entry.get("rule") or ""), "why": str(entry.get("why") or ""),
        "message_id": str(entry.get("message_id") or ""),
    }


def overview(store: Store, now: float) -> dict[str, Any]:
    """Everything `/` shows: the pool, held and overdue threads, the latest decisions."""
    settings = store.settings
    capacity, zone = settings.max_open_per_csm, settings.report_zone
    missed = poolstatus.late(store.redis, settings, now)
    rows = poolstatus.status(store, now, missed)
    members = [_member(row, capacity, zone, now) for row in rows]
    pipe = store.redis.pipeline(transaction=False)
    pipe.zrange(key("held"), 0, LISTED - 1, withscores=True)
    pipe.zcard(key("held"))
    pipe.lrange(key("recent"), 0, RECENT - 1)
    held_raw, held_total, recent_raw = pipe.execute()
    # Overdue now, as status and /metrics count it: held ones are listed under Held.
    owned = sorted((t.due, ref) for ref, t in missed.items() if t.owner)
    held, overdue = _waiting(store, _scored(held_raw), owned[:LISTED], missed, now, zone)
    return {
        "now": moment(now, zone),
        "pool": members,
        "capacity": capacity,
        "available": sum(1 for m in members
                         if not m["off_shift"] and not m["away"] and not m["full"]),
        "open": sum(int(m["open"]) for m in members),
        "held": held, "held_total": int(held_total), "held_more": int(held_total) - len(held),
        "held_reason": held_reason(rows, capacity, zone, now) if int(held_total) else "",
        "held_late": len(missed) - len(owned),
        "overdue": overdue, "overdue_total": len(owned), "overdue_now": len(missed),
        "overdue_more": len(owned) - len(overdue),
        "recent": _recent(recent_raw, now, zone),
        "languages": bool(settings.languages),  # a language column where it routes by one
    }


def _member(row: CsmStatus, capacity: int, zone: tzinfo | None, now: float) -> dict[str, Any]:
    """One CSM's line in the pool table."""
    back = _epoch(row.back_on_shift)
    away_until = _epoch(row.away_until)
    return {
        "csm": row.address,
        "name": row.name or row.address,
        "address": row.address if row.name else "",
        "on_shift": "yes" if row.on_shift else (
            Markup("back {} ({})").format(moment(back, zone), relative(back, now))
            if back is not None else "no"),
        "off_shift": not row.on_shift,
        "away": Markup("{}{}").format(
            (Markup("until {} ({})").format(moment(away_until, zone), relative(away_until, now))
             if away_until is not None else "yes"),
            f", backup {row.backup}" if row.backup else "") if row.away else "",
        "weight": row.weight,
        "open": row.open,
        "full": bool(capacity) and row.open >= capacity,
        "overdue": row.overdue,
        "assigned_today": row.assigned_today,
    }


def _waiting(store: Store, held_rows: list[tuple[int, float]], owned: list[tuple[float, int]],
             missed: dict[int, poolstatus.Late], now: float,
             zone: tzinfo | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The Held and Overdue lists, their threads read in one round trip."""
    due_rows = [(ref, due) for due, ref in owned]
    threads = _threads(store, [ref for ref, _ in held_rows + due_rows])
    # Held past its first-response target: as late as an overdue thread, and first out.
    held = [{
        "link": _link(ref), "subject": thread.get("subject", ""),
        "language": _language(store, thread),
        "customer": _customer(thread), "account": thread.get("account", ""),
        "since": moment(since, zone), "waiting": span(now - since),
        "late": ref in missed,
    } for (ref, since), thread in zip(held_rows, threads, strict=False)]
    overdue = [{
        "link": _link(ref), "subject": thread.get("subject", ""),
        "language": _language(store, thread),
        "customer": _customer(thread), "owner": thread.get("owner", ""),
        "due": moment(due, zone), "late": f"{span(now - due)} late",
    } for (ref, due), thread in zip(due_rows, threads[len(held_rows):], strict=True)]
    return held, overdue


def _language(store: Store, thread: dict[str, str]) -> str:
    """The thread's language by name (`German`), where ROUTER_LANGUAGES routes by it."""
    code = thread.get("language", "")
    return store.settings.language_names.get(code, code) if code else ""


def _recent(recent_raw: list[Any], now: float, zone: tzinfo | None) -> list[dict[str, Any]]:
    """The latest decisions, newest first; an entry that is not a JSON object is skipped."""
    recent = []
    for raw in recent_raw:
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict):
            recent.append(_decision(entry, now, zone))
    return recent
