"""Working hours: who is on shift now, when someone is back, and deadlines in working time.

`ROUTER_HOURS` gives each CSM a time zone, hours, days and a public-holiday calendar, e.g.
`alice@acme.com=Europe/Berlin 09-17 Mon-Fri holidays=DE-BE; bob@acme.com=America/New_York
09:30-18 Mon-Fri`. Hours are local wall-clock time, so a shift keeps its hours across DST
changes; a shift that ends before it starts (`22-06`) runs past midnight, counted from the
day it starts, and a holiday is off like a weekend (the day the shift starts decides). A
CSM without hours is always on shift.

The first-response clock counts the pool's working time: the time when at least one CSM
of the pool is on shift (all the time, if anyone has no hours).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_HOURS = re.compile(r"^(\d{1,2})(?::(\d{2}))?-(\d{1,2})(?::(\d{2}))?$")
# `holidays=DE-BE`: an ISO 3166 country, and optionally one of its subdivisions.
_CALENDAR = re.compile(r"^holidays=([A-Za-z]{2,3})(?:-(\w{1,12}))?$", re.IGNORECASE)
LOOKAHEAD_DAYS = 21  # no working time within three weeks: the schedule is broken, not late


class HoursError(ValueError):
    """A `ROUTER_HOURS` entry that cannot be read; the message says which and why."""


@dataclass(frozen=True)
class Shift:
    """One CSM's working hours: local `start`-`end` on `days` (0 = Monday) in `zone`."""

    zone: ZoneInfo
    start: clock_time
    end: clock_time
    days: frozenset[int]
    calendar: str = ""  # e.g. "DE-BE": the public holidays this CSM has off
    days_off: frozenset[date] = frozenset()  # the calendar's dates, filled in by the settings

    def windows(self, since: float, until: float) -> Iterator[tuple[float, float]]:
        """Each shift overlapping [since, until), as Unix-second intervals, in order."""
        first = datetime.fromtimestamp(since, self.zone).date() - timedelta(days=1)
        last = datetime.fromtimestamp(until, self.zone).date()
        day = first
        while day <= last:
            if day.weekday() in self.days and day not in self.days_off:
                begin, end = self._window(day)
                if end > since and begin < until:
                    yield begin, end
            day += timedelta(days=1)

    def _window(self, day: date) -> tuple[float, float]:
        begin = datetime.combine(day, self.start, self.zone)
        end_day = day if self.end > self.start else day + timedelta(days=1)
        end = datetime.combine(end_day, self.end, self.zone)
        return begin.timestamp(), end.timestamp()

    def on(self, at: float) -> bool:
        return any(True for _ in self.windows(at, at + 1e-6))

    def next_start(self, after: float) -> float | None:
        """When this CSM is next on shift (`after` itself if on shift then)."""
        for begin, _ in self.windows(after, after + LOOKAHEAD_DAYS * 86400):
            return max(begin, after)
        return None

    def describe(self) -> str:
        days = sorted(self.days)
        spans = ", ".join(DAYS[d].title() for d in days)
        off = f", holidays {self.calendar}" if self.calendar else ""
        return f"{self.start:%H:%M}-{self.end:%H:%M} {spans} ({self.zone.key}{off})"


def parse_shift(text: str) -> Shift:
    """`Europe/Berlin 09-17 Mon-Fri holidays=DE-BE` (days optional: every day; the holiday
    calendar optional: none). The calendar is named here; its dates come from the settings,
    which read the `holidays` package (the core imports no library)."""
    parts = text.split()
    calendar = ""
    if parts and (named := _CALENDAR.match(parts[-1])):
        country, region = named.groups()
        calendar = country.upper() + (f"-{region.upper()}" if region else "")
        parts.pop()
    elif parts and parts[-1].lower().startswith("holidays"):
        raise HoursError(f"{parts[-1]!r} is not a holiday calendar like holidays=DE-BE")
    if len(parts) not in (2, 3):
        raise HoursError(f"{text!r} is not 'Time/Zone HH-HH Mon-Fri [holidays=DE-BE]'")
    try:
        zone = ZoneInfo(parts[0])
    except (ZoneInfoNotFoundError, ValueError):
        raise HoursError(f"{parts[0]!r} is not a time zone (e.g. Europe/Berlin)") from None
    found = _HOURS.match(parts[1])
    if not found:
        raise HoursError(f"{parts[1]!r} is not hours like 09-17 or 09:30-18:00")
    h1, m1, h2, m2 = (int(x or 0) for x in found.groups())
    if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
        raise HoursError(f"{parts[1]!r} is not hours like 09-17 or 09:30-18:00")
    start = clock_time(h1, m1)
    end = clock_time(0, 0) if h2 == 24 else clock_time(h2, m2)
    if start == end:
        raise HoursError(f"{parts[1]!r} starts when it ends")
    days = parse_days(parts[2]) if len(parts) == 3 else frozenset(range(7))
    return Shift(zone, start, end, days, calendar)


def parse_days(text: str) -> frozenset[int]:
    """`Mon-Fri`, `Sat,Sun`, `Mon-Wed,Fri`; ranges may wrap (`Fri-Mon`)."""
    found: set[int] = set()
    for item in text.split(","):
        first, _, last = item.strip().lower().partition("-")
        a, b = _day(first), _day(last or first)
        if a is None or b is None:
            raise HoursError(f"{item.strip()!r} is not days like Mon-Fri or Sat,Sun")
        found.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(found)


def _day(name: str) -> int | None:
    """`mon` or `monday` (any case) as 0; None for anything else."""
    for n, full in enumerate(FULL_DAYS):
        if len(name) >= 3 and full.startswith(name):
            return n
    return None


def parse_hours(text: str) -> dict[str, Shift]:
    """`ROUTER_HOURS`: `address=Zone HH-HH Days` entries separated by `;`."""
    hours: dict[str, Shift] = {}
    for entry in filter(None, (e.strip() for e in text.split(";"))):
        address, sep, shift = entry.partition("=")
        address = address.strip().lower()
        if not sep or "@" not in address:
            raise HoursError(f"{entry!r} is not address=Time/Zone HH-HH Mon-Fri")
        if address in hours:
            raise HoursError(f"{address} has hours twice")
        hours[address] = parse_shift(shift)
    return hours


@dataclass(frozen=True)
class Schedule:
    """The pool's shifts: who is on now, when they are back, deadlines in working time."""

    shifts: dict[str, Shift]
    pool: tuple[str, ...]

    def on_shift(self, address: str, at: float) -> bool:
        shift = self.shifts.get(address)
        return shift is None or shift.on(at)

    def off_shift(self, at: float) -> frozenset[str]:
        return frozenset(a for a in self.pool if not self.on_shift(a, at))

    def back_at(self, address: str, at: float) -> float | None:
        """When `address` is next on shift; `at` if now; None if never (within weeks)."""
        shift = self.shifts.get(address)
        return at if shift is None else shift.next_start(at)

    def deadline(self, start: float, minutes: float) -> float:
        """`minutes` of the pool's working time after `start`."""
        wanted = minutes * 60.0
        if wanted <= 0 or any(a not in self.shifts for a in self.pool):
            return start + wanted
        # Most deadlines fall within a day or two: look that far first.
        for days in (2, 7, LOOKAHEAD_DAYS):
            left = wanted
            for begin, end in _merged(w for a in self.pool
                                      for w in self.shifts[a].windows(start, start + days * 86400)):
                begin = max(begin, start)
                if end - begin >= left:
                    return begin + left
                left -= end - begin
        return start + wanted  # nobody ever works: measure in wall-clock time

    def working_seconds(self, start: float, end: float) -> float:
        """How much of [start, end) was the pool's working time."""
        if end <= start:
            return 0.0
        if any(a not in self.shifts for a in self.pool):
            return end - start
        return sum(min(e, end) - max(b, start)
                   for b, e in _merged(w for a in self.pool
                                       for w in self.shifts[a].windows(start, end)))


    def response_seconds(self, span: str) -> float:
        """A first response recorded as `opened:answered`, in working time (as the target
        is); a plain number of seconds as it stands."""
        opened, sep, answered = span.partition(":")
        if not sep:
            return float(span)
        return self.working_seconds(float(opened), float(answered))


def _merged(windows: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for begin, end in sorted(windows):
        if merged and begin <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((begin, end))
    return merged


def local_time(at: float, zone: ZoneInfo | None) -> str:
    """`Mon 09:00 CET`, for notes and `status`."""
    when = datetime.fromtimestamp(at, zone or UTC)
    return when.strftime("%a %H:%M %Z")
