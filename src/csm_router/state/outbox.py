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
live worker (`csm:outbox:running`; freed when that worker's heartbeat key expires) ->
sending (a marker written before the SMTP transaction: until its `write_by` nobody else
sends it) -> done (recorded with the send in one script; a tombstone for a week), or dead
after its retries (`csm-router failed`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rq import Queue

from csm_router.config import ConfigError
from csm_router.config.teams import current_team
from csm_router.state.processes import ProcessBeat
from csm_router.state.store import Store, key, text_hash

log = logging.getLogger(__name__)

DELIVER, SUPPORT = "deliver", "support"
QUEUES = (DELIVER, SUPPORT)


def rq_prefix() -> str:
    """What the team in hand's RQ queue names and job ids begin with ("" without teams):
    each team's worker takes its own team's jobs."""
    team = current_team()
    return f"{team}-" if team else ""


PERFORM = "csm_router.sends.jobs.perform"

# Transient trouble (SMTP 4xx, a relay or mailbox down) is retried for about an hour and
# a half; then the entry is a dead letter and the thread moves on (see jobs.give_up).
# ROUTER_RETRY_DELAYS (seconds, comma-separated) replaces them, e.g. for tests.
RETRY_DELAYS = (5, 15, 30, 60, 300, 600, 1200, 3000)
# What one send may take: the SMTP transaction (aiosmtplib's 60 s timeout), the replica's
# confirmation before it (2 s) and rendering; then, after the relay's 250, how long the
# record of the send is waited for while Redis is away.
SEND_SECONDS = 75.0
AFTER_SEND_PATIENCE = 150.0
WRITE_MARGIN = 15.0  # a marker outlives its writer's last possible write by this much
JOB_MARGIN = 30.0
NOTES_PER_SENDER_PER_DAY = 3
# An offered entry no worker has taken by then is offered again, unless its job is still
# waiting in its queue: so a job lost between a worker's pop and its start waits this long.
OFFER_LEASE = 10
OFFER_BATCH = 10  # entries per job at most
ALIVE_SECONDS = 10  # a worker silent this long is dead: its entries are taken up again
KEEP_DONE_SECONDS = 7 * 86400
KEEP_DEAD_SECONDS = 30 * 86400


def job_timeout(entries: int) -> int:
    """RQ's timeout for a job carrying `entries`: each may send, one may wait after its send.

    `jobs.perform` takes an entry only while the time left covers a send and its wait, so
    a job never times out between a relay's 250 and the record of it.
    """
    return int(entries * SEND_SECONDS + AFTER_SEND_PATIENCE + JOB_MARGIN)


def retry_delays(setting: str) -> tuple[float, ...]:
    """ROUTER_RETRY_DELAYS, or the default schedule; a bad value stops the worker at start."""
    value = setting.strip()
    if not value:
        return tuple(float(x) for x in RETRY_DELAYS)
    parts = [x.strip() for x in value.split(",")]
    if not all(re.fullmatch(r"\d+(\.\d+)?", x) for x in parts):
        raise ConfigError("ROUTER_RETRY_DELAYS", f"expected seconds like 5,15,30, got {value!r}")
    return tuple(float(x) for x in parts)


def gone_here(holder: str) -> bool:
    """Whether `holder` was a process of this host that is gone (or this process's own
    earlier incarnation): then it is known dead, whatever its marker says."""
    name, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if name != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return True  # jobs run one at a time here: an earlier one has ended
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class WorkerNameTakenError(Exception):
    """A live worker already runs under this --name."""


@dataclass(frozen=True)
class Entry:
    """One owed send, as a worker takes it (`marker`: who began sending it before)."""

    id: str
    kind: str
    args: dict[str, Any]
    attempts: int = 0
    marker: str = ""


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
        self.retry_delays: tuple[float, ...] = tuple(float(x) for x in RETRY_DELAYS)

    def _kept(self, seconds: float) -> int:
        return self.store.settings.kept(seconds)

    def _op(self, op: str, now: float | None = None, **fields: Any) -> Any:
        payload = {"op": op, "now": now if now is not None else time.time(),
                   "rq": rq_prefix(), **fields}
        return self.store.run_script("outbox", payload)

    def offer(self, ids: Sequence[str] | None = None, *, now: float | None = None,
              limit: int = 200) -> int:
        """Enqueue jobs for the due entries (of `ids`, or `limit` of any); answers how many.

        Up to `OFFER_BATCH` entries share a job: RQ's own bookkeeping costs a dozen Redis
        round trips a job, which one forward alone would pay in full. Whether an entry's
        last job still waits is read from that job's status, O(1) per entry.
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
                failure_ttl=self._kept(KEEP_DEAD_SECONDS), description=" ".join(entry_ids),
                job_timeout=job_timeout(len(entry_ids)),
            )
            offered += len(entry_ids)
        return offered

    def take(self, entry_id: str, holder: str, same: str = "") -> Entry | None:
        """Hold entry `entry_id` for `holder`; None if it is done, dead, a live worker's, or
        being sent by another incarnation that might still record it.

        `same` is the holder prefix of this worker's stable name: an earlier incarnation
        of it is known dead, so its sending marker does not make this one wait.
        """
        out = self._op("take", id=entry_id, holder=holder, same=same, lease=OFFER_LEASE)
        if out.get("until") and gone_here(str(out.get("holder"))):
            out = self._op("take", id=entry_id, holder=holder, same=same, lease=OFFER_LEASE,
                           dead=out["holder"])
        if out.get("state") != "taken":
            if out.get("until"):
                log.info("%s: %s began sending it and may still record it: not before %s",
                         entry_id, out.get("holder"), time.strftime(
                             "%H:%M:%S", time.gmtime(float(out["until"]))))
            return None
        return Entry(entry_id, out["kind"], json.loads(out["args"]), int(out["attempts"]),
                     str(out.get("marker") or ""))

    def sending(self, entry_id: str, holder: str, write_by: float) -> bool:
        """Mark entry `entry_id` as being sent by `holder`, who will not write after
        `write_by`; False if `holder` no longer holds it (then it must not send)."""
        out = self._op("sending", id=entry_id, holder=holder, write_by=write_by)
        return bool(out.get("state") == "sending")

    def sent(self, message_id: str, entry_id: str | None, result: str,
             writes: Sequence[Sequence[object]] = (), sent_ttl: int = 90 * 86400) -> bool:
        """Record that mail `message_id` went out: the sent marker, `writes` (Redis commands)
        and entry `entry_id` done, at once and once; answers whether this call wrote them."""
        out = self._op("sent", message_id=message_id, id=entry_id or "", result=result,
                       writes=[list(w) for w in writes], sent_ttl=sent_ttl,
                       keep_done=self._kept(KEEP_DONE_SECONDS))
        return bool(out.get("state") == "recorded")

    def done(self, entry_id: str, result: str = "") -> None:
        """Finish entry `entry_id` that needed no send of its own: the same end as `sent`
        writes (lua/outbox.lua `finish`), counted once however often either runs."""
        self._op("done", id=entry_id, result=result, keep_done=self._kept(KEEP_DONE_SECONDS))

    def later(self, entry_id: str, holder: str, delay: float) -> None:
        """Put entry `entry_id`, held by `holder`, back, due in `delay` seconds: a wait, not
        a failed attempt."""
        self._op("later", id=entry_id, holder=holder, delay=delay)

    def retries_left(self, entry: Entry) -> bool:
        """Whether `entry` may be tried again after this attempt failed; if not, the caller
        gives up on it."""
        return entry.attempts < len(self.retry_delays)

    def retry(self, entry: Entry, error: str) -> None:
        """Schedule the next attempt, unless the entry is no longer pending (then nothing)."""
        self._op("retry", id=entry.id, error=error, delay=self.retry_delays[entry.attempts])

    def note_allowed(self, entry_id: str, to: str, day: str,
                     limit: int = NOTES_PER_SENDER_PER_DAY) -> bool:
        """Whether automatic note `entry_id` may go to `to` today (`limit` a sender a day)."""
        out = self._op("note", id=entry_id, to=to.lower(), day=day, limit=limit)
        return bool(out.get("state") == "allowed")

    def dead(self, entry_id: str, error: str) -> None:
        self._op("dead", id=entry_id, error=error, keep_dead=self._kept(KEEP_DEAD_SECONDS))

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
        self.stable = name is not None  # a --name: unique among live workers
        self.holder = ""
        self.proc = ProcessBeat(store.redis, "worker", self.name)
        self.new_identity()

    @property
    def same(self) -> str:
        """The holder prefix shared by every incarnation of a stable name ('' without one)."""
        return f"{self.name}:" if self.stable else ""

    def refuse_live_twin(self, watch: float = 3.0, every: float = 0.5) -> None:
        """Raise WorkerNameTakenError if a live worker runs under this stable name.

        A worker killed with SIGKILL leaves its beat behind for a few seconds: a restart
        must still start. So the beat is watched: a live twin's advances, a dead one's not.
        """
        if not self.stable:
            return
        name_key = key("worker", self.name)
        first = self.store.redis.get(name_key)
        deadline = time.monotonic() + watch
        while first is not None and time.monotonic() < deadline:
            time.sleep(every)  # polling a key another process rewrites: no event to await
            now = self.store.redis.get(name_key)
            if now is not None and now != first:
                raise WorkerNameTakenError(
                    f"a worker named {self.name} is running already (its heartbeat advances): "
                    "give each worker its own --name")

    def new_identity(self) -> None:
        """Give up this worker's holder identity for a fresh one: whatever the old one held
        is taken up by other workers once its heartbeat expires.

        Called at start and whenever the worker lost track of an entry it held (Redis
        failed while recording the outcome), so nothing stays held by a live process.
        """
        self.holder = f"{self.name}:{os.getpid()}:{secrets.token_hex(4)}"

    def beat(self) -> None:
        with self.store.redis.pipeline(transaction=False) as pipe:
            pipe.set(key("alive", self.holder), 1, ex=ALIVE_SECONDS)
            if self.stable:
                pipe.set(key("worker", self.name), f"{self.holder} {time.time():.3f}",
                         ex=ALIVE_SECONDS)
            self.proc.beat(pipe=pipe)  # for /metrics
            pipe.execute()

    def stop(self) -> None:
        self.store.redis.delete(key("alive", self.holder))
        if self.stable:
            self.store.redis.delete(key("worker", self.name))
        self.proc.forget()


class Pump(threading.Thread):
    """A worker's background duty: keep its heartbeat, take up what dead workers held,
    offer due entries, and run the periodic sweep when it is this worker's turn."""

    def __init__(self, outbox: Outbox, heartbeat: Heartbeat, sweep: Any,
                 sweep_seconds: float = 30, interval: float = 1.0,
                 each_round: Any = None) -> None:
        super().__init__(name="csm-outbox-pump", daemon=True)
        self.outbox, self.heartbeat, self.sweep = outbox, heartbeat, sweep
        self.each_round = each_round  # e.g. sending.flush: records Redis could not take
        self.sweep_seconds, self.interval = sweep_seconds, interval
        self.stopping = threading.Event()
        self._failing = False

    def once(self) -> None:
        """One round; raises on Redis trouble (the loop logs it once and carries on)."""
        self.heartbeat.beat()
        if self.each_round is not None:
            self.each_round()
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
