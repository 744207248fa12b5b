"""The lead's figures for a period: per CSM, for the pool and per account, from the daily
tallies the scripts keep (lua/common.lua's `tally` and `took`), for `csm-router report`
and the weekly digest.

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
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from csm_router.config.teams import current_team
from csm_router.config.values import language_name
from csm_router.core.threads import account_of
from csm_router.state.store import Store, key, text

TOUCHED_FLAG = 3  # an account this many CSMs touched in the period is flagged
FIGURES = ("taken", "replies", "overdue", "moved-in", "moved-out", "to-support")
# The tallies' names -> CsmFigures' (`overdue` there is a thread that went overdue).
_ATTRIBUTES = {"moved-in": "reassigned_in", "moved-out": "reassigned_out",
               "to-support": "to_support"}


@dataclass
class CsmFigures:
    """One CSM's period. `overdue` counts threads that went overdue with them in the
    period (escalated), not threads late now: `went_overdue` in --json names it so."""

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
    median_first_response_seconds: float | None = None
    p90_first_response_seconds: float | None = None
    in_pool: bool = True  # False: no longer in ROUTER_POOL, figures kept all the same

    @property
    def went_overdue(self) -> int:
        return self.overdue

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"went_overdue": self.went_overdue}


@dataclass
class Intake:
    """Where the threads that came in during the period went, and the pool's moves."""

    came_in: int = 0  # new threads
    came_in_held: int = 0  # of them, held at once: nobody could take them
    straight_to_support: int = 0  # of them, technical: straight from the customer to Support
    to_support: int = 0  # every thread handed to Support (straight ones included)
    went_overdue: int = 0  # escalations: first responses that went overdue
    went_overdue_held: int = 0  # of them, held: nobody else was available

    @property
    def came_in_to_csm(self) -> int:
        """Routed to a CSM at once."""
        return self.came_in - self.came_in_held - self.straight_to_support

    def as_dict(self) -> dict[str, int]:
        return asdict(self) | {"came_in_to_csm": self.came_in_to_csm}


# Pool-wide tallies (fields without a CSM) -> Intake's attributes.
_INTAKE = {"came-in": "came_in", "came-in:held": "came_in_held",
           "came-in:support": "straight_to_support", "to-support": "to_support",
           "went-overdue": "went_overdue", "went-overdue:held": "went_overdue_held"}


@dataclass
class AccountFigures:
    """How many CSMs touched one account (threads.account_of's customer) in the period."""

    account: str
    csms: list[str]
    flagged: bool

    @property
    def touched_by(self) -> int:
        return len(self.csms)


@dataclass
class LanguageFigures:
    """New threads in one language (ROUTER_LANGUAGES), and how many found no reader free."""

    language: str  # ISO 639-1
    name: str
    came_in: int = 0
    to_the_pool: int = 0  # no CSM who reads it could take it: the whole pool's turn

    @property
    def to_a_reader(self) -> int:
        return self.came_in - self.to_the_pool


@dataclass
class Report:
    since: date
    until: date
    csms: list[CsmFigures]
    accounts: list[AccountFigures] = field(default_factory=list)
    threads: Intake = field(default_factory=Intake)
    zone: str = "UTC"  # whose days: the lead's (Settings.report_zone)
    languages: list[LanguageFigures] = field(default_factory=list)
    team: str = ""  # ROUTER_TEAMS: whose figures these are

    @property
    def flagged(self) -> list[AccountFigures]:
        return [a for a in self.accounts if a.flagged]

    @property
    def departed(self) -> list[CsmFigures]:
        return [c for c in self.csms if not c.in_pool]

    def instant(self, day: date) -> str:
        """When `day` begins in the lead's zone, as an ISO instant in UTC."""
        from zoneinfo import ZoneInfo

        begins = datetime.combine(day, time.min, ZoneInfo(self.zone))
        return begins.astimezone(UTC).isoformat()

    def as_dict(self) -> dict[str, Any]:
        return {
            "team": self.team or None,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "zone": self.zone,
            "since_utc": self.instant(self.since),
            "until_utc": self.instant(self.until),
            "csms": [c.as_dict() for c in self.csms],
            "threads": self.threads.as_dict(),
            "accounts": [{"account": a.account, "touched_by": a.touched_by, "csms": a.csms,
                          "flagged": a.flagged} for a in self.accounts],
            "languages": [{"language": x.language, "name": x.name, "came_in": x.came_in,
                           "to_a_reader": x.to_a_reader, "to_the_pool": x.to_the_pool}
                          for x in self.languages],
        }

    def csv(self) -> str:
        """One row per CSM, one per pool figure, then one per account (`kind` tells which),
        each ending with its team (empty without ROUTER_TEAMS), so that the teams' files can
        be put together; every text cell inert in a spreadsheet (see `inert`)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")

        def put(cells: list[object]) -> None:
            writer.writerow([*cells, self.team])

        columns = [f for f in CsmFigures.__dataclass_fields__ if f != "name"]
        columns.insert(columns.index("overdue") + 1, "went_overdue")
        writer.writerow(["kind", *columns, "account", "touched_by", "flagged", "figure",
                         "value", "team"])
        blank = [""] * len(columns)
        for c in self.csms:
            row = c.as_dict()
            row["in_pool"] = "yes" if c.in_pool else "no"
            put(["csm", *(inert("" if row[k] is None else row[k]) for k in columns),
                 "", "", "", "", ""])
        for name, value in self.threads.as_dict().items():
            put(["threads", *blank, "", "", "", name, value])
        for a in self.accounts:
            put(["account", *blank, inert(a.account), a.touched_by,
                 "yes" if a.flagged else "no", "", ""])
        for x in self.languages:
            for name in ("came_in", "to_a_reader", "to_the_pool"):
                put(["language", *blank, "", "", "", f"{x.language}:{name}",
                     getattr(x, name)])
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
    """The figures of [since, until) from Redis (two round trips): everyone with figures
    in the period, also CSMs who have left ROUTER_POOL since (marked `in_pool` False)."""
    settings = store.settings
    figures = {m.address: CsmFigures(m.address, m.name) for m in settings.pool}
    intake = Intake()
    touched: dict[str, set[str]] = {}
    languages: dict[str, LanguageFigures] = {}
    period = [key("daily", day.isoformat()) for day in days(since, until)]
    with store.redis.pipeline(transaction=False) as pipe:
        for daily in period:
            pipe.hgetall(daily)
            pipe.hkeys(f"{daily}:touched")
        found = pipe.execute()
    for counts, pairs in zip(found[::2], found[1::2], strict=True):
        for name, value in counts.items():
            what, _, csm = text(name).partition("\t")
            if not csm:
                _count_language(languages, what, int(value))
                if what in _INTAKE:
                    setattr(intake, _INTAKE[what], getattr(intake, _INTAKE[what]) + int(value))
                continue
            row = figures.get(csm) or figures.setdefault(csm, CsmFigures(csm, in_pool=False))
            attribute = _ATTRIBUTES.get(what, what)
            if attribute in FIGURE_ATTRIBUTES:
                setattr(row, attribute, getattr(row, attribute) + int(value))
        for pair in pairs:
            # A customer's address (or, tallied before, an account): its account either way.
            customer, _, csm = text(pair).partition("\t")
            touched.setdefault(account_of(customer), set()).add(csm)
    _first_responses(store, period, figures)
    accounts = sorted((AccountFigures(a, sorted(c), len(c) >= TOUCHED_FLAG)
                       for a, c in touched.items()),
                      key=lambda a: (-a.touched_by, a.account))
    return Report(since, until, list(figures.values()), accounts, intake,
                  settings.report_zone.key,
                  sorted(languages.values(), key=lambda x: (-x.came_in, x.language)),
                  current_team())


def _count_language(languages: dict[str, LanguageFigures], what: str, value: int) -> None:
    """`language:<code>` and `language-to-pool:<code>` tallies (lua/record.lua)."""
    kind, _, code = what.partition(":")
    if kind not in ("language", "language-to-pool") or not code:
        return
    row = languages.get(code) or languages.setdefault(
        code, LanguageFigures(code, language_name(code)))
    if kind == "language":
        row.came_in += value
    else:
        row.to_the_pool += value


FIGURE_ATTRIBUTES = frozenset({"taken", "replies", "overdue", "reassigned_in",
                               "reassigned_out", "to_support"})


def _first_responses(store: Store, period: list[str], figures: dict[str, CsmFigures]) -> None:
    """Each CSM's first responses of the period, in working time; a reply is tallied
    with every first response, so the CSMs with figures are every CSM who has any."""
    schedule = store.settings.schedule
    csms = list(figures)
    with store.redis.pipeline(transaction=False) as pipe:
        for daily in period:
            for csm in csms:
                pipe.lrange(f"{daily}:first-response:{csm}", 0, -1)
        found = pipe.execute()
    waits: dict[str, list[float]] = {csm: [] for csm in csms}
    for n, spans in enumerate(found):
        waits[csms[n % len(csms)]] += [schedule.response_seconds(text(s)) for s in spans]
    for csm, seconds in waits.items():
        shown = describe_waits(seconds)
        row = figures[csm]
        row.median_first_response_seconds, row.p90_first_response_seconds = shown[:2]
        row.median_first_response_minutes, row.p90_first_response_minutes = shown[2:]


def describe_waits(seconds: list[float]) -> tuple[float | None, float | None,
                                                  float | None, float | None]:
    """Median and p90 (nearest rank) in seconds, then the same in minutes: floats, so a
    13-second answer is 0.22 minutes, not 0. `status` and the report share it."""
    ordered = sorted(seconds)
    if not ordered:
        return None, None, None, None
    median = statistics.median(ordered)
    p90 = ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]
    return round(median, 1), round(p90, 1), round(median / 60, 2), round(p90 / 60, 2)
