"""Redis losing its data, noticed at once by every process; and whether it keeps it at all.

The sequence of thread references is written with a marker, `csm:epoch` (a random token).
A process that has seen the marker and then finds it gone knows that Redis lost its data
(a restart without persistence, a failover to an empty replica, a FLUSHALL) at its next
look: the router each pass, the worker's watch each second, web at each request. Only a
router starts numbering again, above every reference ever handed out (it knows a bound
from its mailbox, see Router._ensure_sequence); the same script tells the lead, once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import RedisError, ResponseError

from csm_router.core.threads import format_ref
from csm_router.state.keys import key, text, text_hash

log = logging.getLogger(__name__)

def epoch_key() -> str:
    """The marker of the data this team's processes work on (read when asked: the team in
    hand decides the key)."""
    return key("epoch")


def lost_key() -> str:
    """When a router last found Redis emptied, and where numbering went on."""
    return key("lost")
WATCH_SECONDS = 1.0
PERSISTENCE_RECHECK_SECONDS = 30.0


class EpochWatch:
    """What one process has seen of `csm:epoch`; says once when it vanished or changed."""

    def __init__(self, redis: Redis, role: str) -> None:
        self.redis, self.role = redis, role
        self.seen: str | None = None
        self.lost = False  # seen once, gone now: Redis lost its data under us
        self.started = time.time()

    def intact(self) -> bool:
        """Whether Redis still holds the data this process has seen (one GET).

        False when the marker is gone after this process saw it, when it is there but
        another one (a router began again after a loss), or when it was never written.
        """
        current = text(self.redis.get(epoch_key())) or None
        if current is None:
            if self.seen is not None and not self.lost:
                log.error("%s: Redis lost its data (%s is gone): what was routed before is "
                          "no longer known to Redis; a router numbers new threads above "
                          "every earlier reference", self.role, epoch_key())
                self.lost = True
            return False
        if current == self.seen:
            return True
        # A new marker: Redis lost its data and a router numbered again, whether this
        # process saw the old one or started just before the loss and never did.
        renewed = self.seen is not None
        loss = Loss.read(self.redis)
        if renewed or (loss is not None and loss.at >= self.started):
            log.warning("%s: %s", self.role, loss.describe() if loss else
                        f"Redis lost its data; a router has started again (a new {epoch_key()})")
        self.accept(current)
        return not renewed

    def accept(self, epoch: str) -> None:
        """Remember `epoch` as the data this process works on."""
        self.seen, self.lost = epoch, False


def persistence_problem(redis: Redis) -> tuple[bool, str | None]:
    """(fatal, what is wrong) with how Redis keeps its data; (False, None) when it does.

    Fatal when Redis keeps nothing (no append-only file and no snapshots): a restart then
    empties it. Where CONFIG is disabled (managed services rename it), say it cannot be
    told rather than guess.
    """
    try:
        appendonly = text(redis.config_get("appendonly").get("appendonly"))
        save = text(redis.config_get("save").get("save")).strip()
    except ResponseError:
        return False, ("cannot tell whether Redis keeps its data (CONFIG GET is disabled): "
                       "make sure it runs with appendonly yes (deploy/redis.conf.example)")
    if appendonly == "yes":
        return False, None
    if save:
        return False, (f"Redis keeps only snapshots (save {save}, appendonly no): a crash "
                       "loses the writes since the last one; run it with appendonly yes")
    return True, ("Redis keeps no data on disk (appendonly no, no save): a restart empties "
                  "it; run it with appendonly yes (deploy/redis.conf.example)")


def warn_persistence(redis: Redis, role: str) -> None:
    """At start: one warning line when Redis does not keep its data; never raises."""
    try:
        _, problem = persistence_problem(redis)
    except RedisError:
        return  # Redis down: the process says so itself as it waits
    if problem:
        log.warning("%s: %s", role, problem)


@dataclass(frozen=True)
class Loss:
    """What the router that found Redis emptied recorded about it."""

    at: float
    next_ref: int
    by: str

    @classmethod
    def read(cls, redis: Redis) -> Loss | None:
        fields = text_hash(redis.hgetall(lost_key()) or {})
        try:
            return cls(float(fields["at"]), int(fields["next"]), fields.get("by", ""))
        except (KeyError, ValueError):
            return None

    def describe(self) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.at))
        return (f"Redis lost its data before {stamp}; thread references went on from "
                f"{format_ref(self.next_ref)}")


def watch(redis: Redis, role: str, stop: threading.Event,
          *, warn_only: bool = False) -> threading.Thread | None:
    """Warn now if Redis keeps no data, then (unless `warn_only`) look for a loss every
    second until `stop`: a worker's companion to its outbox pump. Answers the thread."""
    warn_persistence(redis, role)
    if warn_only:
        return None
    epoch = EpochWatch(redis, role)

    def run() -> None:
        while True:
            # An outage: the worker's own loop logs it and waits it out.
            with contextlib.suppress(RedisError):
                epoch.intact()
            if stop.wait(WATCH_SECONDS):
                return

    thread = threading.Thread(target=run, name="csm-epoch-watch", daemon=True)
    thread.start()
    return thread
