"""The Prometheus view of what every router and worker keeps in Redis.

The counters and process beats (state/processes.py) are shared by the whole deployment,
so one scrape of any `csm-router web` sees all of it. Gauges (queues, open and overdue
threads, processes) are read from the state itself at scrape time, so they cannot drift
from it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
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

from csm_router.config import Settings
from csm_router.lead.poolstatus import late
from csm_router.state.keys import key, text
from csm_router.state.outbox import QUEUES as RQ_QUEUES
from csm_router.state.outbox import rq_prefix
from csm_router.state.processes import (
    FORWARD_BUCKETS,
    HISTOGRAM,
    bucket_of,
    metrics_key,
    processes,
)

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


class RedisCollector(Collector):
    """Builds every metric from Redis on each scrape; processes are labelled by name,
    host and pid only when `detailed` (a scrape with the status page's credentials)."""

    def __init__(self, redis: Redis, settings: Settings, *, detailed: bool = False) -> None:
        self.redis, self.settings, self.detailed = redis, settings, detailed

    def collect(self) -> Iterator[Metric]:
        counts = {text(k): v for k, v in (self.redis.hgetall(metrics_key()) or {}).items()}
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
                pipe.llen(f"rq:queue:{rq_prefix()}{queue}")
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
