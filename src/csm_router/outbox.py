"""The outbox: every send a decision implies is owed in Redis before anything is sent.

The Redis script that records a decision also writes each send it implies (a forward, a
Support handoff, a confirmation, a reminder, a notice to the lead) as an outbox entry,
keyed by what makes it unique, so it can be owed only once. Workers deliver entries from
here: an RQ job is only a hint to hurry. Every worker's pump offers again whatever is due
and not in a live worker's hands, so a router or worker killed at any instant, a job lost
between RQ's pop and its start, or a Redis error loses nothing.

An entry's life: pending (due now, or at its next retry) -> offered (an RQ job carries
it, with up to `OFFER_BATCH - 1` others; if nobody has taken it `OFFER_LEASE` seconds
later and its job is no longer waiting in its queue, it is offered again) -> taken by a
live worker (`csm:outbox:running`; freed when that worker's heartbeat key expires) -> done
(a tombstone for a week), or dead after its retries (`csm-router failed`).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rq import Queue

from csm_router.metrics import ProcessBeat
from csm_router.store import Store, key, text_hash

log = logging.getLogger(__name__)

DELIVER, SUPPORT, MAINTENANCE = "deliver", "support", "maintenance"
QUEUES = (DELIVER, SUPPORT, MAINTENANCE)
PERFORM = "csm_router.jobs.perform"

# Transient trouble (SMTP 4xx, a relay or mailbox down) is retried for about an hour and
# a half; then the entry is a dead letter and the thread moves on (see jobs.give_up).
RETRY_DELAYS = (5, 15, 30, 60, 300, 600, 1200, 3000)
# An offered entry no worker has taken by then is offered again, unless its job is still
# waiting in its queue: so a job lost between a worker's pop and its start waits this long.
OFFER_LEASE = 10
OFFER_BATCH = 10  # entries per job at most
HEARTBEAT_SECONDS = 2
ALIVE_SECONDS = 10  # a worker silent this long is dead: its entries are taken up again
KEEP_DONE_SECONDS = 7 * 86400
KEEP_DEAD_SECONDS = 30 * 86400


@dataclass(frozen=True)
class Entry:
    """One owed send, as a worker takes it."""

    id: str
    kind: str
    args: dict[str, Any]
    attempts: int = 0


@dataclass(frozen=True)
class DeadLetter:
    """A send that failed for good, kept for `csm-router failed`."""

    id: str
    kind: str
    args: dict[str, Any]
    attempts: int
    error: str
    dead_at: float


class Outbox:
    """Owed sends in Redis: offer them to workers, take, finish, retry or dead-letter."""

    def __init__(self, store: Store, queues: dict[str, Queue]) -> None:
        self.store = store
        self.queues = queues

    def _op(self, op: str, now: float | None = None, **fields: Any) -> Any:
        payload = {"op": op, "now": now if now is not None else time.time(), **fields}
        return self.store.run_script("outbox", payload)

    def offer(self, ids: Sequence[str] | None = None, *, now: float | None = None,
              limit: int = 500) -> int:
        """Enqueue jobs for the due entries (of `ids`, or any); answers how many entries.

        Up to `OFFER_BATCH` entries share a job: RQ's own bookkeeping costs a dozen Redis
        round trips a job, which one forward alone would pay in full.
        """
        if ids is not None and not ids:
            return 0
        jobs = self._op("offer", now, ids=list(ids) if ids is not None else None,
                        lease=OFFER_LEASE, limit=limit, batch=OFFER_BATCH)
        offered = 0
        for job in jobs if isinstance(jobs, list) else []:
            entry_ids = [str(i) for i in job["ids"]]
            self.queues[job["queue"]].enqueue(
                PERFORM, *entry_ids, job_id=job["job"], result_ttl=60,
                failure_ttl=KEEP_DEAD_SECONDS, description=" ".join(entry_ids),
            )
            offered += len(entry_ids)
        return offered

    def take(self, entry_id: str, holder: str) -> Entry | None:
        """Hold entry `entry_id` for `holder`; None if it is done, dead or a live worker's."""
        out = self._op("take", id=entry_id, holder=holder)
        if out.get("state") != "taken":
            return None
        return Entry(entry_id, out["kind"], json.loads(out["args"]), int(out["attempts"]))

    def done(self, entry_id: str, result: str = "") -> None:
        self._op("done", id=entry_id, result=result, keep_done=KEEP_DONE_SECONDS)

    def done_in(self, pipe: Any, entry_id: str, kind: str, result: str = "") -> None:
        """Queue `done` for entry `entry_id` on `pipe`, with the send's own record.

        What lua/outbox.lua's `done` does, as plain commands: the send that finishes an
        entry and the entry's end are then written in one transaction.
        """
        ekey = key("outbox", "e", entry_id)
        pipe.zrem(key("outbox"), entry_id)
        pipe.hdel(key("outbox", "running"), entry_id)
        pipe.hset(ekey, mapping={"state": "done", "done": time.time(), "result": result})
        pipe.hincrby(key("metrics"), f"done\t{kind}", 1)
        pipe.expire(ekey, KEEP_DONE_SECONDS)

    def retry(self, entry: Entry, error: str) -> bool:
        """Schedule the next attempt; False when the retries are used up (the caller gives up)."""
        if entry.attempts >= len(RETRY_DELAYS):
            return False
        self._op("retry", id=entry.id, error=error, delay=RETRY_DELAYS[entry.attempts])
        return True

    def dead(self, entry_id: str, error: str) -> None:
        self._op("dead", id=entry_id, error=error, keep_dead=KEEP_DEAD_SECONDS)

    def reclaim(self, *, dead_prefix: str | None = None, keep: str = "") -> list[str]:
        """Make entries held by dead workers due now; answers their ids.

        A worker is dead when its heartbeat key expired, or, for a worker restarted under
        a stable name, when its holder starts with `dead_prefix` and is not `keep`.
        """
        rows = self._op("reclaim", dead_prefix=dead_prefix or "", keep=keep)
        found = []
        for entry_id, holder in rows if isinstance(rows, list) else []:
            log.warning("%s was in the hands of %s, which stopped: taken up again",
                        entry_id, holder)
            found.append(str(entry_id))
        return found

    def pending(self) -> int:
        return int(self.store.redis.zcard(key("outbox")))

    def dead_letters(self) -> list[DeadLetter]:
        ids = [str(i, "utf-8") if isinstance(i, bytes) else str(i)
               for i in self.store.redis.zrange(key("dead"), 0, -1)]
        found = []
        for entry_id in ids:
            letter = self.dead_letter(entry_id)
            if letter is not None:
                found.append(letter)
        return found

    def dead_letter(self, entry_id: str) -> DeadLetter | None:
        fields = text_hash(self.store.redis.hgetall(key("outbox", "e", entry_id)))
        if fields.get("state") != "dead":
            return None
        return DeadLetter(entry_id, fields["kind"], json.loads(fields["args"]),
                          int(fields.get("attempts") or 0), fields.get("error", ""),
                          float(fields.get("dead") or 0))

    def revive(self, entry_id: str) -> bool:
        """Send a dead letter again, with a fresh set of retries."""
        if self._op("revive", id=entry_id).get("state") != "pending":
            return False
        self.offer([entry_id])
        return True

    def drop(self, entry_id: str) -> bool:
        return bool(self._op("drop", id=entry_id).get("state") == "dropped")


class Heartbeat:
    """A worker's proof of life: while its key lives, entries it holds are not taken up."""

    def __init__(self, store: Store, name: str | None = None) -> None:
        self.store = store
        self.name = name or socket.gethostname()
        self.holder = ""
        self.proc = ProcessBeat(store.redis, "worker", self.name)
        self.renew()

    def renew(self) -> None:
        """Start a new incarnation: whatever the old one held is taken up once it expires.

        Called at start and whenever the worker lost track of an entry it held (Redis
        failed while recording the outcome), so nothing stays held by a live process.
        """
        self.holder = f"{self.name}:{os.getpid()}:{secrets.token_hex(4)}"

    def beat(self) -> None:
        with self.store.redis.pipeline(transaction=False) as pipe:
            pipe.set(key("alive", self.holder), 1, ex=ALIVE_SECONDS)
            self.proc.beat(pipe=pipe)  # for /metrics
            pipe.execute()

    def stop(self) -> None:
        self.store.redis.delete(key("alive", self.holder))
        self.proc.forget()


class Pump(threading.Thread):
    """A worker's background duty: keep its heartbeat, take up what dead workers held,
    offer due entries, and run the periodic sweep when it is this worker's turn."""

    def __init__(self, outbox: Outbox, heartbeat: Heartbeat, sweep: Any,
                 sweep_seconds: float = 30, interval: float = 1.0) -> None:
        super().__init__(name="csm-outbox-pump", daemon=True)
        self.outbox, self.heartbeat, self.sweep = outbox, heartbeat, sweep
        self.sweep_seconds, self.interval = sweep_seconds, interval
        self.stopping = threading.Event()
        self._failing = False

    def once(self) -> None:
        """One round; raises on Redis trouble (the loop logs it once and carries on)."""
        self.heartbeat.beat()
        self.outbox.reclaim()
        self.outbox.offer()
        redis = self.outbox.store.redis
        # One sweep per period for the whole deployment, whichever workers are alive.
        if redis.set(key("sweep", "lock"), self.heartbeat.holder, nx=True,
                     px=int(self.sweep_seconds * 1000)):
            self.sweep()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.once()
                if self._failing:
                    log.info("outbox pump: Redis is back")
                self._failing = False
            except Exception as exc:
                if not self._failing:
                    log.warning("outbox pump: %s (retrying every %.0fs)", exc, self.interval)
                self._failing = True
            self.stopping.wait(self.interval)
