"""The lead's figures for a period: per CSM and per account, from the daily tallies the
scripts keep (lua/common.lua's `tally`), for `csm-router report` and the weekly digest.

Days are the lead's (their ROUTER_HOURS time zone, else UTC: `Settings.report_zone`); a
period is every day from `since` up to, not including, `until`.
First responses count the pool's working time, as the first-response target does.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import Any

from csm_router.store import Store, key, text

TOUCHED_FLAG = 3  # an account this many CSMs touched in the period is flagged
FIGURES = ("taken", "replies", "overdue", "moved-in", "moved-out", "to-support")


@dataclass
class CsmFigures:
    """One CSM's period."""

    address: str
    name: str = ""
    taken: int = 0
    replies: int = 0
    median_first_response_minutes: float | None = None
    p90_first_response_minutes: float | None = None
    overdue: int = 0
    reassigned_in: int = 0
    reassigned_out: int = 0
    to_support: int = 0


@dataclass
class AccountFigures:
    """How many CSMs touched one account in the period, and who."""

    account: str
    csms: list[str]
    flagged: bool

    @property
    def touched_by(self) -> int:
        return len(self.csms)


@dataclass
class Report:
    since: date
    until: date
    csms: list[CsmFigures]
    accounts: list[AccountFigures] = field(default_factory=list)

    @property
    def flagged(self) -> list[AccountFigures]:
        return [a for a in self.accounts if a.flagged]

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "csms": [asdict(c) for c in self.csms],
            "accounts": [{"account": a.account, "touched_by": a.touched_by, "csms": a.csms,
                          "flagged": a.flagged} for a in self.accounts],
        }

    def csv(self) -> str:
        """One row per CSM, then one per account (`kind` tells which); every text cell
        inert in a spreadsheet (see `inert`)."""
        buffer = io.StringIO()
        out = csv.writer(buffer, lineterminator="\n")
        columns = [f for f in CsmFigures.__dataclass_fields__ if f != "name"]
        out.writerow(["kind", *columns, "account", "touched_by", "flagged"])
        for c in self.csms:
            row = asdict(c)
            out.writerow(["csm", *(inert("" if row[k] is None else row[k]) for k in columns),
                          "", "", ""])
        for a in self.accounts:
            out.writerow(["account", *([""] * len(columns)), inert(a.account), a.touched_by,
                          "yes" if a.flagged else "no"])
        return buffer.getvalue()


# What makes a spreadsheet read a cell as a formula (or a DDE call): OWASP's list.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def inert(value: object) -> object:
    """A text cell a spreadsheet shows as text: one that begins like a formula gets a
    leading single quote (OWASP's advice for CSV injection). Numbers stay numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def days(since: date, until: date) -> list[date]:
    return [since + timedelta(days=n) for n in range((until - since).days)]


def build(store: Store, since: date, until: date) -> Report:
    """The figures of [since, until) from Redis (one round trip per day)."""
    pool = store.settings.pool
    schedule = store.settings.schedule
    figures = {m.address: CsmFigures(m.address, m.name) for m in pool}
    waits: dict[str, list[float]] = {m.address: [] for m in pool}
    touched: dict[str, set[str]] = {}
    for day in days(since, until):
        daily = key("daily", day.isoformat())
        with store.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(daily)
            pipe.hkeys(f"{daily}:touched")
            for m in pool:
                pipe.lrange(f"{daily}:first-response:{m.address}", 0, -1)
            counts, pairs, *responses = pipe.execute()
        for name, value in counts.items():
            what, _, csm = text(name).partition("\t")
            row = figures.setdefault(csm, CsmFigures(csm))  # someone who left the pool
            attribute = {"moved-in": "reassigned_in", "moved-out": "reassigned_out",
                         "to-support": "to_support"}.get(what, what)
            if attribute in CsmFigures.__dataclass_fields__:
                setattr(row, attribute, getattr(row, attribute) + int(value))
        for m, found in zip(pool, responses, strict=True):
            waits[m.address] += [schedule.response_seconds(text(s)) for s in found]
        for pair in pairs:
            account, _, csm = text(pair).partition("\t")
            touched.setdefault(account, set()).add(csm)
    for address, seconds in waits.items():
        minutes = sorted(s / 60 for s in seconds)
        figures[address].median_first_response_minutes = _rounded(
            statistics.median(minutes) if minutes else None)
        figures[address].p90_first_response_minutes = _rounded(
            minutes[max(0, math.ceil(0.9 * len(minutes)) - 1)] if minutes else None)
    accounts = sorted((AccountFigures(a, sorted(c), len(c) >= TOUCHED_FLAG)
                       for a, c in touched.items()),
                      key=lambda a: (-a.touched_by, a.account))
    return Report(since, until, list(figures.values()), accounts)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
