"""What a routing decision reads (a snapshot) and what it answers (a decision). No I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from csm_router.core.commands import Command
from csm_router.core.people import PoolMember

if TYPE_CHECKING:
    from csm_router.core.classify import RuleSet


class Action(StrEnum):
    """What happens to a message; stored in Redis as these lowercase strings."""

    FORWARD = "forward"  # to a CSM; `target=None` means the next one the pool hands out
    RECORD_REPLY = "reply"  # a CSM's own reply copied to the alias: record, never forward
    IGNORE = "ignore"  # on purpose, with the reason (auto-replies, bounces, our own mail)
    SUPPORT = "support"  # a technical request handed to Support
    COMMAND = "command"  # Support gives a thread back to the pool (#success)
    QUARANTINE = "quarantine"  # kept aside with the reason, never routed


class ThreadState(StrEnum):
    OPEN = "open"
    HELD = "held"  # nobody could take it; handed out as soon as someone can
    SUPPORT = "support"  # with Support; customer mail goes there until #success
    CLOSED = "closed"


@dataclass(frozen=True)
class ThreadInfo:
    """What the rules may know of an existing thread."""

    ref: int
    owner: str | None
    state: ThreadState
    customer: str = ""
    due: float | None = None  # when the first response is due, while the clock runs


@dataclass(frozen=True)
class Onboarding:
    """An account assigned to an onboarding CSM at `since` (epoch seconds) for `days`."""

    owner: str
    since: float
    days: int

    def active(self, now: float) -> bool:
        return now < self.since + self.days * 86400


@dataclass(frozen=True)
class Snapshot:
    """Read-only state a decision may look at, gathered before deciding."""

    now: float
    alias: str
    pool: tuple[PoolMember, ...]
    away: frozenset[str]
    # When each of `away` is back, for those marked away until a time (epoch seconds).
    away_until: Mapping[str, float] = field(default_factory=dict)
    # Who covers whom while away (`csm-router away ADDRESS --backup ADDRESS`).
    backups: Mapping[str, str] = field(default_factory=dict)
    thread: ThreadInfo | None = None  # the known thread this message belongs to
    matched_by: str = ""  # how `thread` was recognised, for the reason
    tag_owner: str | None = None  # CSM whose signature tag the message quotes
    tag_thread: ThreadInfo | None = None  # the customer's open thread with that CSM
    onboarding: Onboarding | None = None
    # CSMs at ROUTER_MAX_OPEN_PER_CSM (that many open threads): no new thread goes to them.
    full: frozenset[str] = frozenset()
    max_open: int = 0
    sender_verified: bool = False  # the sender really is who From says (see auth)
    verdict: str = ""  # why it is (not) verified, for the reason
    # Command lines in the thread's customer mail, read when a CSM or Support writes one:
    # repeating one of them may be quoting the customer (commands.command_lines).
    customer_commands: frozenset[str] = frozenset()
    support_address: str | None = None  # None: no Support handoff configured
    support_rules: RuleSet | None = None
    # Threads of other customers the message refers to; it does not join them.
    foreign_refs: tuple[int, ...] = ()
    recorded: str | None = None  # the message's state if it was recorded before (a copy)
    # Outside their working hours (ROUTER_HOURS): no new threads; when each is back.
    off_shift: frozenset[str] = frozenset()
    back_at: Mapping[str, float | None] = field(default_factory=dict)
    due_if_started: float | None = None  # a first-response clock started now would end then
    premium: bool = False  # the sender's account is in ROUTER_PREMIUM
    # The language the message is written in (ISO 639-1, "" if unsure or not asked), its
    # name, and who reads each language (ROUTER_LANGUAGES; empty: languages play no part).
    # Account affinity (ROUTER_AFFINITY_DAYS, 0 = off): when each CSM last took or answered
    # a thread of the sender's account.
    affinity_days: int = 0
    served: Mapping[str, float] = field(default_factory=dict)
    language: str = ""
    language_name: str = ""
    readers: Mapping[str, Iterable[str]] = field(default_factory=dict)

    def in_pool(self, address: str | None) -> bool:
        return address is not None and any(m.address == address for m in self.pool)

    def is_away(self, address: str) -> bool:
        """Away or off shift: what lua/common.lua `is_away` answers for the same state."""
        return address in self.away or address in self.off_shift

    def available(self, address: str | None) -> bool:
        """In the pool, not away and on shift (capacity is checked when recording)."""
        return address is not None and self.in_pool(address) and not self.is_away(address)

    def full_why(self, address: str) -> str | None:
        """Why `address` takes no new thread for capacity, or None while they have room."""
        if address not in self.full:
            return None
        return f"{address} is full ({self.max_open} open threads)"

    def unavailable_why(self, address: str) -> str | None:
        """Why `address` takes no new thread now (left, away, off shift or full), or None."""
        if not self.in_pool(address):
            return f"{address} has left the pool"
        if address in self.away:
            until = self.away_until.get(address)
            return f"{address} is away" + (f" (until {day_and_time(until)})" if until else "")
        if address in self.off_shift:
            back = self.back_at.get(address)
            return f"{address} is off shift" + (f" (until {day_and_time(back)})" if back
                                                 else "")
        return self.full_why(address)


def away_at(marks: Mapping[str, str], now: float, always: Iterable[str] = ()) -> frozenset[str]:
    """Who is away at `now`: `always` (ROUTER_AWAY), and each CSM `csm:away` (`marks`) lists
    with no end ('') or an end after `now`; an end already past means back.

    The one reading of `csm:away` in Python; lua/common.lua `is_away` reads it the same way
    (tests/test_away.py holds them to it).
    """
    return frozenset(always) | frozenset(
        a for a, until in marks.items() if not until or float(until) > now)


def day_and_time(at: float) -> str:
    """`Thu 3 Dec 09:00 UTC`: a reason names the day too, as an absence may last weeks."""
    moment = datetime.fromtimestamp(at, UTC)
    return f"{moment:%a} {moment.day} {moment:%b %H:%M} UTC"


@dataclass(frozen=True)
class Decision:
    """Where a message goes, which rule said so and why."""

    action: Action
    rule: str
    why: str
    target: str | None = None
    ref: int | None = None
    command: Command | None = None
    error: str | None = None  # a command that cannot be carried out: the sender is told
    cover_for: str | None = None  # `target` is the backup of this away owner, covering

    @classmethod
    def to_backup(cls, backup: str, owner: str, *, rule: str, why: str, ref: int) -> Decision:
        """To `backup`, covering the away `owner`: the thread returns to them once back."""
        return cls(Action.FORWARD, rule, why, target=backup, ref=ref, cover_for=owner)

    @classmethod
    def to_csm(cls, target: str, *, rule: str, why: str, ref: int | None = None) -> Decision:
        return cls(Action.FORWARD, rule, why, target, ref)

    @classmethod
    def next_csm(cls, *, rule: str, why: str, ref: int | None = None) -> Decision:
        return cls(Action.FORWARD, rule, why, None, ref)

    @classmethod
    def record_reply(
        cls,
        csm: str,
        ref: int,
        *,
        rule: str,
        why: str,
        command: Command | None = None,
        error: str | None = None,
    ) -> Decision:
        return cls(Action.RECORD_REPLY, rule, why, csm, ref, command, error)

    @classmethod
    def ignore(
        cls,
        *,
        rule: str,
        why: str,
        ref: int | None = None,
        command: Command | None = None,
        error: str | None = None,
    ) -> Decision:
        return cls(Action.IGNORE, rule, why, None, ref, command, error)

    @classmethod
    def to_support(cls, *, rule: str, why: str, ref: int | None = None) -> Decision:
        return cls(Action.SUPPORT, rule, why, None, ref)

    @classmethod
    def quarantine(cls, *, rule: str, why: str) -> Decision:
        return cls(Action.QUARANTINE, rule, why)

    @property
    def target_label(self) -> str:
        if self.action is Action.FORWARD:
            return self.target or "next CSM"
        return self.action.value
