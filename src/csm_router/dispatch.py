"""The shared runtime (settings, Redis, queues) and enqueueing work on RQ, idempotently."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass

from redis import Redis
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError

from csm_router.config import Settings
from csm_router.store import Outcome, Store, key

log = logging.getLogger(__name__)

DELIVER, SUPPORT, MAINTENANCE = "deliver", "support", "maintenance"
QUEUES = (DELIVER, SUPPORT, MAINTENANCE)

# Transient SMTP trouble is retried for about an hour and a half, then dead-lettered
# in RQ's failed registry where `rq` tooling (and `csm-router status`) can see it.
SEND_RETRY = Retry(max=8, interval=[5, 15, 30, 60, 300, 600, 1200, 3000])

_MARK_ENQUEUED = """
if redis.call('HGET', KEYS[1], 'state') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'state', 'enqueued')
end
return 1
"""


@dataclass
class Runtime:
    """Everything a process needs, built once at start-up and passed down."""

    settings: Settings
    redis: Redis
    store: Store
    queues: dict[str, Queue]

    @classmethod
    def from_settings(cls, settings: Settings, redis: Redis | None = None) -> Runtime:
        # RQ stores pickled payloads, so the connection must not decode responses.
        conn = redis if redis is not None else Redis.from_url(settings.redis_url)
        queues = {name: Queue(name, connection=conn) for name in QUEUES}
        store = Store(conn, settings)
        return cls(settings, conn, store, queues)


def _job_id(kind: str, *parts: str) -> str:
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]
    return f"csm-{kind}-{digest}"


def enqueue_delivery(rt: Runtime, msgkey: str, owner: str, why: str = "") -> None:
    """Forward message `msgkey` to `owner`; a repeat of the same forward is a no-op."""
    from csm_router import jobs  # the job module imports this one

    try:
        rt.queues[DELIVER].enqueue(
            jobs.deliver,
            msgkey,
            owner,
            why,
            job_id=_job_id("deliver", msgkey, owner),
            unique=True,
            retry=SEND_RETRY,
            description=f"deliver {msgkey} to {owner}",
        )
    except DuplicateJobError:
        log.debug("delivery of %s to %s already queued", msgkey, owner)
    rt.redis.eval(_MARK_ENQUEUED, 1, key("msg", msgkey), "decided")


def enqueue_overflow(rt: Runtime, ref: int) -> None:
    """Tell the overflow address about held thread `ref`, once."""
    from csm_router import jobs

    if rt.settings.overflow_address is None:
        log.warning("CS-%s held and ROUTER_OVERFLOW_ADDRESS is not set: nobody told", ref)
        return
    with contextlib.suppress(DuplicateJobError):
        rt.queues[DELIVER].enqueue(
            jobs.notify_overflow,
            ref,
            job_id=_job_id("overflow", str(ref)),
            unique=True,
            retry=SEND_RETRY,
            description=f"overflow notice for CS-{ref}",
        )


def dispatch(rt: Runtime, msgkey: str, outcome: Outcome, why: str) -> None:
    """Enqueue whatever a recorded outcome calls for. Safe to call again after a crash."""
    if outcome.state == "decided" and outcome.owner:
        enqueue_delivery(rt, msgkey, outcome.owner, why)
    if outcome.held_new and outcome.ref is not None:
        enqueue_overflow(rt, outcome.ref)
    if outcome.released and outcome.owner:
        for held in outcome.released:
            enqueue_delivery(rt, held, outcome.owner, "the thread was held; you took it")


def release_held(rt: Runtime) -> int:
    """Hand out held threads to whoever can take them now; answers how many."""
    released = rt.store.release_held()
    for item in released:
        log.info("CS-%s released to %s", item.ref, item.owner)
        for msgkey in item.messages:
            enqueue_delivery(rt, msgkey, item.owner, "held until a CSM could take it")
    return len(released)
