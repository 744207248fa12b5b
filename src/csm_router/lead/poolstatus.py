"""The pool right now: each CSM's open, overdue now and taken today; held and recent threads."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any, NamedTuple

from csm_router.config import Settings
from csm_router.core.decision import away_at
from csm_router.lead.report import describe_waits
from csm_router.state.store import Store, key, text, text_hash


@dataclass(frozen=True)
class CsmStatus:
    """One row of `csm-router status`."""

    address: str
    name: str
    weight: int
    away: bool
    away_until: str | None
    backup: str | None  # while away: who takes the replies in their threads
    open: int
    overdue: int  # threads past their first-response target right now (overdue_now)
    assigned_today: int  # threads taken today (taken_today): kept for older readers
    on_shift: bool  # within their ROUTER_HOURS now (always, without hours)
    shift: str | None  # their hours, e.g. "09:00-17:00 Mon, ... (Europe/Berlin)"
    back_on_shift: str | None  # when off shift: when the next shift starts (ISO, UTC)
    median_first_response_minutes: float | None
    p90_first_response_minutes: float | None
    median_first_response_seconds: float | None
    p90_first_response_seconds: float | None

    @property
    def overdue_now(self) -> int:
        return self.overdue

    @property
    def taken_today(self) -> int:
        """The report's `taken` for today, the lead's day: one counter (lua/common.lua's
        `took`) for both."""
        return self.assigned_today

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"overdue_now": self.overdue_now,
                               "taken_today": self.taken_today}


def today(store: Store, now: float) -> date:
    """The lead's day at `now` (Settings.report_zone): the day `taken_today` counts."""
    return datetime.fromtimestamp(now, store.settings.report_zone).date()


def status(store: Store, now: float,
           overdue: dict[int, Late] | None = None) -> list[CsmStatus]:
    """The pool with live figures, in ROUTER_POOL order; `overdue` is `late`'s reading
    when the caller already has it.

    First responses are the latest (up to 1,000) of each CSM, whenever they were.
    """
    pipe = store.redis.pipeline(transaction=False)
    pipe.hgetall(key("away"))
    pipe.hgetall(key("backup"))
    pipe.hgetall(key("daily", today(store, now).isoformat()))
    for member in store.settings.pool:
        pipe.scard(key("open", member.address))
        pipe.lrange(key("stats", "first-response", member.address), 0, -1)
    away_raw, backup_raw, daily_raw, *per_csm = pipe.execute()
    backups = text_hash(backup_raw)
    held_by = Counter(t.owner for t in (overdue if overdue is not None
                                        else late(store.redis, store.settings, now)).values())
    away = text_hash(away_raw)
    away_now = away_at(away, now, store.settings.away)
    taken = {field.partition("\t")[2]: int(value) for field, value in text_hash(daily_raw).items()
             if field.startswith("taken\t")}
    schedule = store.settings.schedule
    rows = []
    for i, member in enumerate(store.settings.pool):
        open_count, durations = per_csm[2 * i], per_csm[2 * i + 1]
        until = away.get(member.address)
        is_away = member.address in away_now
        until_text = (
            datetime.fromtimestamp(float(until), UTC).isoformat(timespec="minutes")
            if until
            else None
        )
        waits = describe_waits([schedule.response_seconds(text(d)) for d in durations])
        on_shift = schedule.on_shift(member.address, now)
        back = None if on_shift else schedule.back_at(member.address, now)
        shift = schedule.shifts.get(member.address)
        rows.append(
            CsmStatus(
                address=member.address,
                name=member.name,
                weight=member.weight,
                away=is_away,
                away_until=until_text if is_away else None,
                backup=backups.get(member.address) if is_away else None,
                open=int(open_count),
                overdue=held_by[member.address],
                assigned_today=taken.get(member.address, 0),
                on_shift=on_shift,
                shift=shift.describe() if shift else None,
                back_on_shift=(datetime.fromtimestamp(back, UTC).isoformat(timespec="minutes")
                               if back is not None else None),
                median_first_response_seconds=waits[0],
                p90_first_response_seconds=waits[1],
                median_first_response_minutes=waits[2],
                p90_first_response_minutes=waits[3],
            )
        )
    return rows


class Late(NamedTuple):
    """One thread overdue now: the due time it missed, and who holds it ('' while held)."""

    due: float
    owner: str


def late(redis: Any, settings: Settings, now: float) -> dict[int, Late]:
    """Every thread overdue now: past its first-response target and not answered yet.
    Status, the page and /metrics all count from this one reading.

    That is `csm:due` past `now` (the sweep has not reached them yet), `csm:late` (the
    sweep escalated them: with a colleague on a fresh clock, or held with nobody to take
    them; they leave it only when answered, closed or with Support), and held threads
    that have waited longer than the target in the pool's working time (held when they
    came in, they never had a clock).
    """
    with redis.pipeline(transaction=False) as pipe:
        pipe.zrangebyscore(key("due"), "-inf", now, withscores=True)
        pipe.zrange(key("late"), 0, -1, withscores=True)
        pipe.zrange(key("held"), 0, -1, withscores=True)
        due, missed, held = pipe.execute()
    found: dict[int, float] = {}
    for ref, score in [*due, *missed]:
        number = int(text(ref))
        found[number] = min(float(score), found.get(number, float(score)))
    waiting = [(int(text(ref)), float(since)) for ref, since in held]
    waiting = [(ref, since) for ref, since in waiting if ref not in found]
    # One round trip: the owner of each thread found, the account of each held one.
    with redis.pipeline(transaction=False) as pipe:
        for ref in found:
            pipe.hget(key("thread", ref), "owner")
        for ref, _ in waiting:
            pipe.hget(key("thread", ref), "account")
        answers = pipe.execute() if found or waiting else []
    owners, accounts = answers[:len(found)], answers[len(found):]
    out = {ref: Late(due, text(owner or b"")) for (ref, due), owner
           in zip(found.items(), owners, strict=True)}
    for (ref, since), account in zip(waiting, accounts, strict=True):
        target = settings.first_response_seconds(text(account or b"")) / 60
        due_at = settings.schedule.deadline(since, target)
        if due_at <= now:
            out[ref] = Late(due_at, "")
    return out


def held_count(store: Store) -> int:
    return int(text(store.redis.zcard(key("held"))))


def recent_threads(store: Store, limit: int = 50) -> list[dict[str, str]]:
    """The newest threads, newest first."""
    refs = [int(text(r)) for r in store.redis.zrevrange(key("threads"), 0, limit - 1)]
    return [store.thread(ref) for ref in refs]
