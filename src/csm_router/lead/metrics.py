"""Counts every router and worker keeps in Redis, and the Prometheus view of them.

Counters live in one Redis hash, `csm:metrics`, written by the same scripts and
transactions that do the counted work, so a message is counted once however many routers
fetch it, and one scrape of any `csm-router web` sees the whole deployment. A field is a
family name and its label values, tab-separated (see `lua/common.lua`'s `count`). Gauges
(queues, open and overdue threads, processes) are read from the state itself at scrape
time, so they cannot drift from it.

Each process also writes a line about itself to `csm:procs` (role, host, its poll
interval, IMAP state, last beat), which `/healthz` and the heartbeat gauges read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from redis import Redis

from csm_router import __version__
from csm_router.config import Settings
from csm_router.state.pool import late
from csm_router.state.store import key, text

log = logging.getLogger(__name__)

METRICS = key("metrics")
PROCS = key("procs")
RQ_QUEUES = ("deliver", "support")  # outbox.QUEUES, which imports this module
# The mail server stamps its receipt to the second, so finer buckets would be noise.
FORWARD_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
# A process silent this long left for good (a host gone, a container replaced): forget
# it. Alert on the heartbeat gauge for anything quicker.
PROC_FORGET_SECONDS = 3600
ROUTER_GRACE_SECONDS = 5  # a pass of mail beats every ten messages; IDLE wakes within the poll

# family in csm:metrics -> (metric name, help, label names); see lua/ for who counts what.
COUNTERS = {
    "seen": ("csm_router_messages_seen", "Messages the routers recorded a decision for", ()),
    "routed": ("csm_router_messages_routed",
               "Messages routed (forward, held, support, reply, command), by rule",
               ("action", "rule")),
    "quarantined": ("csm_router_messages_quarantined", "Messages quarantined, by rule",
                    ("rule",)),
    "ignored": ("csm_router_messages_ignored", "Messages ignored on purpose, by rule",
                ("rule",)),
    "decision": ("csm_router_decisions", "Customer messages given to each CSM", ("csm",)),
    "attempt": ("csm_router_delivery_attempts", "Sends attempted from the outbox, by kind",
                ("kind",)),
    "failure": ("csm_router_delivery_failures",
                "Sends that failed (retried later or dead-lettered), by kind", ("kind",)),
    "done": ("csm_router_deliveries_done", "Outbox entries finished, by kind", ("kind",)),
}
HISTOGRAM = "forward_seconds"


def bucket_of(seconds: float) -> str:
    """The histogram field a forward taking `seconds` counts in (non-cumulative)."""
    for bound in FORWARD_BUCKETS:
        if seconds <= bound:
            return f"{HISTOGRAM}\tle\t{bound:g}"
    return f"{HISTOGRAM}\tle\t+Inf"


def observe_forward(pipe: Any, seconds: float) -> None:
    """Queue on `pipe` one forward that took `seconds` from receipt to the relay's accept."""
    seconds = max(seconds, 0.0)
    pipe.hincrby(METRICS, bucket_of(seconds), 1)
    pipe.hincrbyfloat(METRICS, f"{HISTOGRAM}\tsum", seconds)


# -- processes ----------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    """One router or worker as it last reported itself."""

    id: str
    role: str
    name: str
    host: str
    pid: int
    beat: float
    poll: float
    imap: str  # routers: "connected" or "disconnected"; workers: ""
    version: str

    def silent_for(self, now: float) -> float:
        return max(now - self.beat, 0.0)

    @property
    def public_id(self) -> str:
        """Stable for this process, and naming neither its login, host nor pid."""
        return hashlib.sha256(self.id.encode()).hexdigest()[:8]

    def label(self, detailed: bool) -> str:
        """How /healthz names it: by name, pid and host to someone who logged in."""
        if detailed:
            return f"{self.name} (pid {self.pid} on {self.host})"
        return self.public_id

    def late(self, now: float) -> bool:
        """A router is late once silent for longer than its poll interval (and a pass)."""
        return self.role == "router" and self.silent_for(now) > self.poll + ROUTER_GRACE_SECONDS


class ProcessBeat:
    """This process's line in `csm:procs`, renewed by its main loop."""

    def __init__(self, redis: Redis, role: str, name: str | None = None,
                 poll: float = 0.0) -> None:
        self.redis, self.role, self.poll = redis, role, poll
        self.host = socket.gethostname()
        self.name = name or self.host
        self.pid = os.getpid()
        self.id = f"{role}:{self.name}@{self.host}:{self.pid}"
        self.imap = ""
        self.beaten = float("-inf")

    def beat(self, now: float | None = None, *, pipe: Any = None) -> None:
        """Report in now (on `pipe`, if given, for the caller to execute)."""
        self.beaten = now if now is not None else time.time()
        line = {"role": self.role, "name": self.name, "host": self.host,
                "pid": self.pid, "beat": self.beaten,
                "poll": self.poll, "imap": self.imap, "version": __version__}
        (pipe if pipe is not None else self.redis).hset(PROCS, self.id, json.dumps(line))

    def keep_alive(self, now: float, every: float = 1.0) -> None:
        """Report in during long work, at most once per `every` seconds."""
        if now - self.beaten >= every:
            self.beat(now)

    def forget(self) -> None:
        """A clean stop: this process is gone on purpose, not late."""
        self.redis.hdel(PROCS, self.id)


def processes(redis: Redis, now: float | None = None) -> list[Proc]:
    """Every process that reported itself within PROC_FORGET_SECONDS, oldest first."""
    now = now if now is not None else time.time()
    found = []
    for field, value in (redis.hgetall(PROCS) or {}).items():
        try:
            line = json.loads(value)
            proc = Proc(text(field), str(line["role"]), str(line["name"]), str(line["host"]),
                        int(line["pid"]), float(line["beat"]), float(line.get("poll") or 0),
                        str(line.get("imap") or ""), str(line.get("version") or ""))
        except (ValueError, KeyError, TypeError):
            continue  # not ours to judge; a later beat overwrites it
        if proc.silent_for(now) <= PROC_FORGET_SECONDS:
            found.append(proc)
    return sorted(found, key=lambda p: p.beat)


def forget_stale(redis: Redis, now: float | None = None) -> None:
    """Drop the lines of processes that are gone: killed on this host (a process that
    stops cleanly drops its own), or silent for longer than PROC_FORGET_SECONDS."""
    now = now if now is not None else time.time()
    procs = processes(redis, now)
    here = socket.gethostname()
    keep = {p.id for p in procs if p.host != here or p.pid == os.getpid() or _running(p.pid)}
    stale = [f for f in map(text, redis.hkeys(PROCS) or []) if f not in keep]
    if stale:
        redis.hdel(PROCS, *stale)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, but alive
    return True


def check_routers(redis: Redis, now: float | None = None,
                  *, detailed: bool = False) -> tuple[list[str], list[Proc]]:
    """What is wrong with the deployment (empty when healthy), and its routers, from one
    read of Redis; routers are named by login, host and pid only when `detailed`.

    Healthy: Redis answers, at least one router reported itself, and every router beat
    within its poll interval (plus a grace for a pass of mail).
    """
    now = now if now is not None else time.time()
    try:
        procs = processes(redis, now)
    except Exception as exc:  # any way Redis fails is the answer itself
        return [f"Redis unreachable: {exc}"], []
    routers = [p for p in procs if p.role == "router"]
    if not routers:
        return ["no router has reported itself: is `csm-router run` running?"], []
    problems = [f"router {p.label(detailed)} silent for "
                f"{p.silent_for(now):.0f}s, over its poll interval of {p.poll:g}s"
                for p in routers if p.late(now)]
    problems += [f"router {p.label(detailed)} has no IMAP connection"
                 for p in routers if not p.late(now) and p.imap != "connected"]
    return problems, routers


# -- the Prometheus view ---------------------------------------------------------------


class RedisCollector(Collector):
    """Builds every metric from Redis on each scrape; processes are labelled by name,
    host and pid only when `detailed` (a scrape with the status page's credentials)."""

    def __init__(self, redis: Redis, settings: Settings, *, detailed: bool = False) -> None:
        self.redis, self.settings, self.detailed = redis, settings, detailed

    def collect(self) -> Iterator[Metric]:
        counts = {text(k): v for k, v in (self.redis.hgetall(METRICS) or {}).items()}
        yield from self._counters(counts)
        yield self._histogram(counts)
        yield from self._gauges(time.time())

    def _counters(self, counts: dict[str, Any]) -> Iterator[Metric]:
        rows: dict[str, list[tuple[list[str], float]]] = {f: [] for f in COUNTERS}
        for field, value in counts.items():
            family, *labels = field.split("\t")
            if family in rows:
                rows[family].append((labels, float(value)))
        for family, (name, doc, label_names) in COUNTERS.items():
            metric = CounterMetricFamily(name, doc, labels=list(label_names))
            for labels, value in sorted(rows[family]):
                if len(labels) == len(label_names):
                    metric.add_metric(labels, value)
            if not label_names and not rows[family]:
                metric.add_metric([], 0.0)
            yield metric

    def _histogram(self, counts: dict[str, Any]) -> Metric:
        total, buckets = 0.0, []
        for bound in [*FORWARD_BUCKETS, float("inf")]:
            field = bucket_of(bound)
            total += float(counts.get(field, 0))
            buckets.append((field.rpartition("\t")[2] if bound == float("inf") else str(bound),
                            total))
        return HistogramMetricFamily(
            "csm_router_forward_seconds",
            "From the mail server's receipt (topmost Received header) to the relay "
            "accepting the first forward to a CSM",
            buckets=buckets, sum_value=float(counts.get(f"{HISTOGRAM}\tsum", 0)))

    def _gauges(self, now: float) -> Iterator[Metric]:
        r = self.redis
        pool = [m.address for m in self.settings.pool]
        with r.pipeline(transaction=False) as pipe:
            pipe.zcard(key("outbox"))
            pipe.hlen(key("outbox", "running"))
            pipe.zcard(key("dead"))
            pipe.zcard(key("held"))
            for queue in RQ_QUEUES:
                pipe.llen(f"rq:queue:{queue}")
            for address in pool:
                pipe.scard(key("open", address))
            pipe.hgetall(key("daily", self._today(now)))
            pending, running, dead, held, *rest = pipe.execute()
        queues, rest = rest[:len(RQ_QUEUES)], rest[len(RQ_QUEUES):]
        open_counts, today = rest[:len(pool)], rest[-1]
        outbox = GaugeMetricFamily("csm_router_outbox_entries",
                                   "Owed sends: pending (due or awaiting a retry), running",
                                   labels=["state"])
        outbox.add_metric(["pending"], pending)
        outbox.add_metric(["running"], running)
        yield outbox
        yield GaugeMetricFamily("csm_router_dead_letters",
                                "Sends that failed for good (csm-router failed)", value=dead)
        rq = GaugeMetricFamily("csm_router_queue_length", "Jobs waiting in each RQ queue",
                               labels=["queue"])
        for name, length in zip(RQ_QUEUES, queues, strict=True):
            rq.add_metric([name], length)
        yield rq
        yield GaugeMetricFamily("csm_router_held_threads",
                                "Threads held right now, waiting for a CSM with room "
                                "(status: held)", value=held)
        yield from self._per_csm(pool, open_counts, now)
        yield self._taken_today(pool, today)
        yield from self._process_gauges(now)

    def _per_csm(self, pool: list[str], open_counts: list[int],
                 now: float) -> tuple[Metric, Metric, Metric]:
        opened = GaugeMetricFamily("csm_router_open_threads",
                                   "Open threads per CSM now (status: open)", labels=["csm"])
        for address, n in zip(pool, open_counts, strict=True):
            opened.add_metric([address], n)
        owners = [t.owner for t in late(self.redis, self.settings, now).values()]
        counts = dict.fromkeys(pool, 0)
        for owner in owners:
            if owner:
                counts[owner] = counts.get(owner, 0) + 1
        overdue = GaugeMetricFamily("csm_router_overdue_threads",
                                    "Threads overdue now: past their first-response target "
                                    "and not yet answered, per CSM who holds them (status: "
                                    "overdue now; not the report's went overdue)",
                                    labels=["csm"])
        for address, n in counts.items():
            overdue.add_metric([address], n)
        held = GaugeMetricFamily("csm_router_held_overdue_threads",
                                 "Held threads past their first-response target (status: "
                                 "held overdue)", value=sum(1 for o in owners if not o))
        return opened, overdue, held

    def _today(self, now: float) -> str:
        return datetime.fromtimestamp(now, self.settings.report_zone).date().isoformat()

    def _taken_today(self, pool: list[str], tallies: dict[Any, Any]) -> Metric:
        """The one count of threads taken (lua/common.lua's `took`), for the lead's day."""
        taken = dict.fromkeys(pool, 0)
        for field, value in tallies.items():
            what, _, csm = text(field).partition("\t")
            if what == "taken" and csm in taken:
                taken[csm] = int(value)
        metric = GaugeMetricFamily(
            "csm_router_threads_taken_today",
            "Threads that became each CSM's today, in the lead's time zone (status: taken "
            "today; report: taken)", labels=["csm"])
        for address, n in taken.items():
            metric.add_metric([address], n)
        return metric

    def _process_gauges(self, now: float) -> Iterator[Metric]:
        procs = processes(self.redis, now)
        # A router's name is its IMAP login: shown, with host and pid, to a scrape that
        # logged in; others see a stable id that names none of them.
        who = ["name", "host", "pid"] if self.detailed else ["process"]
        beat = GaugeMetricFamily("csm_router_process_heartbeat_timestamp_seconds",
                                 "When each router and worker last reported itself",
                                 labels=["role", *who])
        imap = GaugeMetricFamily("csm_router_imap_connected",
                                 "1 while a router holds its IMAP connection", labels=who)
        for p in procs:
            labels = [p.name, p.host, str(p.pid)] if self.detailed else [p.public_id]
            beat.add_metric([p.role, *labels], p.beat)
            if p.role == "router":
                imap.add_metric(labels,
                                1.0 if p.imap == "connected" and not p.late(now) else 0.0)
        yield beat
        yield imap
