"""Whether the deployment works, in one verdict that `/healthz` and the status page share.

Each check answers findings: a line for `/healthz` (processes named by login, host and pid
only to a caller with the status page's credentials) and a headline for the page's banner.
A fatal finding fails `/healthz` (503) and shows as a red banner; a note keeps it at 200
and shows as a warning. Both read the same function, so the page and `/healthz` never
disagree about what is wrong.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import tzinfo

from redis import Redis
from redis.exceptions import RedisError

from csm_router.lead.statuspage import span
from csm_router.mail.outbound import when
from csm_router.state.durability import (
    PERSISTENCE_RECHECK_SECONDS,
    EpochWatch,
    Loss,
    persistence_problem,
)
from csm_router.state.logins import refusal
from csm_router.state.outbox import ALIVE_SECONDS
from csm_router.state.processes import Proc, check_routers, processes
from csm_router.state.store import key, text

# Mail owed this long past its due time with no live worker fails /healthz: long enough
# for a worker restarted by systemd or docker to come back, short against a customer's wait.
OWED_GRACE_SECONDS = 60.0
OWED_LISTED = 100  # entries read to tell how long the oldest has been owed


@dataclass(frozen=True)
class Finding:
    """One thing wrong (`fatal`) or worth knowing, said twice: for /healthz and the page."""

    line: str
    headline: str
    fatal: bool = True


@dataclass(frozen=True)
class Verdict:
    """What /healthz answers and the status page's banners show."""

    findings: list[Finding] = field(default_factory=list)
    fine: list[str] = field(default_factory=list)  # what is well, for a healthy /healthz

    @property
    def healthy(self) -> bool:
        return not any(f.fatal for f in self.findings)

    @property
    def lines(self) -> list[str]:
        """/healthz's lines: what is wrong when unhealthy, else what is well and the notes."""
        if not self.healthy:
            return [f.line for f in self.findings if f.fatal]
        return self.fine + [f.line for f in self.findings]

    def banners(self) -> list[dict[str, object]]:
        """The status page's banners: what is wrong first, then what is worth knowing."""
        ordered = sorted(self.findings, key=lambda f: not f.fatal)
        return [{"text": f.headline, "fatal": f.fatal} for f in ordered]


def router_findings(problems: list[str], routers: list[Proc], now: float) -> list[Finding]:
    """`check_routers`'s problems, each with the page's words for what it means."""
    if not routers:
        return [Finding(line, "No router is running: nothing new is being routed")
                for line in problems]
    late = [p for p in routers if p.late(now)]
    unplugged = [p for p in routers if not p.late(now) and p.imap != "connected"]
    alone = len(late) + len(unplugged) == len(routers)
    consequence = ("nothing new is being routed" if alone
                   else "the other routers still route")
    headlines = [f"Router silent for {span(p.silent_for(now))}: {consequence}" for p in late]
    headlines += [f"Router's IMAP login is refused: {consequence}" if p.imap == "refused"
                  else f"Router has no IMAP connection: {consequence}" for p in unplugged]
    return [Finding(line, headline)
            for line, headline in zip(problems, headlines, strict=False)]


def owed_mail(redis: Redis, now: float, procs: list[Proc],
              grace: float = OWED_GRACE_SECONDS) -> Finding | None:
    """Sends owed past their due time by more than `grace` while no live worker can take
    them; None when a worker beats (it offers and takes up whatever is due) or nothing is
    that late.

    Due entries wait in `csm:outbox` by their due time; an entry a worker took is out of
    reach there (scored a day ahead) and listed in `csm:outbox:running`, so with no live
    worker those count too, from when they were taken.
    """
    workers = [p for p in procs if p.role == "worker" and p.silent_for(now) <= ALIVE_SECONDS]
    if workers:
        return None
    pipe = redis.pipeline(transaction=False)
    pipe.zcount(key("outbox"), "-inf", now - grace)
    pipe.zrangebyscore(key("outbox"), "-inf", now - grace, start=0, num=OWED_LISTED)
    pipe.hkeys(key("outbox", "running"))
    late_count, late_ids, running = pipe.execute()
    ids = [text(i) for i in late_ids] + [text(i) for i in running]
    if not ids:
        return None
    pipe = redis.pipeline(transaction=False)
    for entry_id in ids:
        pipe.hmget(key("outbox", "e", entry_id), "state", "created", "started")
    since: list[float] = []
    stuck = 0  # taken by a worker that is gone
    for n, (state, created, started) in enumerate(pipe.execute()):
        if text(state) != "pending":
            continue
        if n >= len(late_ids):
            if float(text(started) or now) > now - grace:
                continue
            stuck += 1
        since.append(float(text(created) or now))
    owed = int(late_count) + stuck
    if not owed or not since:
        return None
    age = span(now - min(since))
    sends = f"{owed} send{'s' if owed != 1 else ''}"
    return Finding(
        f"no worker: {sends} owed for {age}, none taken: is `csm-router worker` running?",
        f"No worker: {sends} owed for {age}: nothing is being sent")


def login_findings(redis: Redis, now: float) -> list[Finding]:
    """An OAuth login refused: nothing new comes in or goes out once the tokens lapse."""
    found = refusal(redis)
    if found is None:
        return []
    since = span(max(now - found.since, 0.0))
    return [Finding(f"mailbox login refused for {since}: {found.line}",
                    f"The mailbox login is refused (for {since}): {found.line}")]


class Health:
    """The deployment's verdict and the watch on Redis losing its data, shared by the
    requests of one web process."""

    def __init__(self, redis: Redis, grace: float = OWED_GRACE_SECONDS,
                 zone: tzinfo | None = None) -> None:
        self.redis, self.grace, self.zone = redis, grace, zone
        self.epoch = EpochWatch(redis, "web")
        self._lost_seen: float | None = None
        self._persistence: tuple[bool, str | None] = (False, None)
        self._persistence_at = float("-inf")

    def look(self) -> None:
        """Notice a loss of Redis's data at once (logged once); never raises."""
        with contextlib.suppress(RedisError):
            self.epoch.intact()

    def report(self, now: float, *, detailed: bool) -> tuple[bool, list[str]]:
        """(healthy, lines) as /healthz says them."""
        verdict = self.verdict(now, detailed=detailed)
        return verdict.healthy, verdict.lines

    def verdict(self, now: float, *, detailed: bool) -> Verdict:
        """Everything wrong now; processes named by login, host and pid only when
        `detailed` (the caller gave the status page's credentials)."""
        problems, routers = check_routers(self.redis, now, detailed=detailed)
        if problems and problems[0].startswith("Redis unreachable"):
            line = problems[0] if detailed else "Redis unreachable"
            return Verdict([Finding(line, "Redis unreachable: nothing is routed or sent")])
        findings = router_findings(problems, routers, now)
        try:
            owed = owed_mail(self.redis, now, processes(self.redis, now), self.grace)
            findings += [owed] if owed else []
            findings += login_findings(self.redis, now)
            findings += self._data_findings(now)
        except RedisError as exc:
            said = str(exc) if detailed else f"{type(exc).__name__} (details with credentials)"
            return Verdict([Finding(f"Redis unreachable: {said}",
                                    "Redis unreachable: nothing is routed or sent")])
        return Verdict(findings, [f"router {p.label(detailed)} beat {p.silent_for(now):.0f}s ago"
                                  for p in routers])

    def _data_findings(self, now: float) -> list[Finding]:
        findings = []
        self.epoch.intact()
        if self.epoch.lost:
            if self._lost_seen is None:
                self._lost_seen = now
            findings.append(Finding(
                "Redis lost its data: a router numbers new threads above every earlier "
                "reference at its next pass",
                f"Redis lost its data at {when(self._lost_seen, self.zone)}: what was "
                "routed before is unknown to it until a router numbers threads again"))
        else:
            self._lost_seen = None
            if (loss := Loss.read(self.redis)) is not None:
                findings.append(Finding(loss.describe(), loss.describe(), fatal=False))
        fatal, persistence = self._persistence_problem(now)
        if persistence:
            findings.append(Finding(persistence, persistence, fatal=fatal))
        return findings

    def _persistence_problem(self, now: float) -> tuple[bool, str | None]:
        if now >= self._persistence_at + PERSISTENCE_RECHECK_SECONDS:
            self._persistence = persistence_problem(self.redis)
            self._persistence_at = now
        return self._persistence
