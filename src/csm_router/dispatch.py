"""The shared runtime (settings, Redis, queues) and enqueueing follow-up work, idempotently."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from redis import Redis
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError
from rq.registry import FailedJobRegistry

from csm_router.classify import RuleSet, load_rules
from csm_router.config import Settings
from csm_router.decision import Action, Decision
from csm_router.message import Inbound
from csm_router.outbound import render
from csm_router.store import Outcome, Store, key
from csm_router.threads import format_ref, reply_subject

log = logging.getLogger(__name__)

DELIVER, SUPPORT, MAINTENANCE = "deliver", "support", "maintenance"
QUEUES = (DELIVER, SUPPORT, MAINTENANCE)
SWEEP_SECONDS = 30

# Transient SMTP trouble is retried for about an hour and a half, then dead-lettered
# in RQ's failed registry where `rq` tooling (and `csm-router status`) can see it.
SEND_RETRY = Retry(max=8, interval=[5, 15, 30, 60, 300, 600, 1200, 3000])


@dataclass
class Runtime:
    """Everything a process needs, built once at start-up and passed down."""

    settings: Settings
    redis: Redis
    store: Store
    queues: dict[str, Queue]
    support_rules: RuleSet

    @classmethod
    def from_settings(cls, settings: Settings, redis: Redis | None = None) -> Runtime:
        # RQ stores pickled payloads, so the connection must not decode responses.
        conn = redis if redis is not None else Redis.from_url(settings.redis_url)
        queues = {name: Queue(name, connection=conn) for name in QUEUES}
        store = Store(conn, settings)
        return cls(settings, conn, store, queues, load_rules(settings.support_rules))


def _job_id(kind: str, *parts: str) -> str:
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]
    return f"csm-{kind}-{digest}"


def enqueue_job(rt: Runtime, queue: str, func: Any, *args: Any, kind: str) -> None:
    """Enqueue `func(*args)` once per kind and arguments."""
    _enqueue(rt, queue, func, *args, job_id=_job_id(kind, *map(str, args)),
             what=f"{kind} {' '.join(map(str, args))}")


def _enqueue(rt: Runtime, queue: str, func: Any, *args: Any, job_id: str, what: str) -> None:
    """Enqueue once: a job with the same id already queued (or done recently) is enough."""
    with contextlib.suppress(DuplicateJobError):
        rt.queues[queue].enqueue(
            func, *args, job_id=job_id, unique=True, retry=SEND_RETRY, description=what
        )


def enqueue_delivery(
    rt: Runtime, msgkey: str, owner: str, why: str = "", cause: str = ""
) -> None:
    """Forward message `msgkey` to `owner`; a repeat of the same forward is a no-op.

    `cause` tells apart a later forward of the same message to the same CSM (after a
    command, an escalation or an admin's reassign) from a repeat of the first one.
    """
    from csm_router import jobs  # the job module imports this one

    _enqueue(rt, DELIVER, jobs.deliver, msgkey, owner, why, cause,
             job_id=_job_id("deliver", msgkey, owner, cause),
             what=f"deliver {msgkey} to {owner}")


def enqueue_support(
    rt: Runtime, msgkey: str, ref: int, cause: str = "", tell: bool = False
) -> None:
    """Hand message `msgkey` of thread `ref` to Support (again, for a new `cause`)."""
    from csm_router import jobs

    _enqueue(rt, SUPPORT, jobs.hand_to_support, msgkey, ref, cause, tell,
             job_id=_job_id("support", msgkey, cause), what=f"support handoff of CS-{ref}")


def enqueue_overflow(rt: Runtime, ref: int) -> None:
    """Tell the overflow address about held thread `ref`, once."""
    from csm_router import jobs

    if rt.settings.overflow_address is None:
        log.warning("CS-%s held and ROUTER_OVERFLOW_ADDRESS is not set: nobody told", ref)
        return
    _enqueue(rt, DELIVER, jobs.notify_overflow, ref,
             job_id=_job_id("overflow", str(ref)), what=f"overflow notice for CS-{ref}")


def enqueue_notice(rt: Runtime, msgkey: str) -> None:
    """Send the confirmation or error recorded for a command in message `msgkey`."""
    from csm_router import jobs

    _enqueue(rt, DELIVER, jobs.send_notice, msgkey,
             job_id=_job_id("notice", msgkey), what=f"command reply for {msgkey}")


def dispatch(rt: Runtime, msgkey: str, outcome: Outcome) -> None:
    """Enqueue what a recorded outcome calls for, then mark it done. Safe to repeat."""
    work = outcome.followup
    if work.owner:
        for other in work.deliver:
            # A message forwarding itself is its first forward; others are re-forwards.
            enqueue_delivery(rt, other, work.owner, work.why, "" if other == msgkey else msgkey)
    if work.support and outcome.ref is not None:
        cause = "" if work.support == msgkey else msgkey
        enqueue_support(rt, work.support, outcome.ref, cause, work.tell)
    if work.overflow is not None:
        enqueue_overflow(rt, work.overflow)
    if work.notice:
        enqueue_notice(rt, msgkey)
    rt.store.mark_dispatched(msgkey)


def failed_jobs(rt: Runtime) -> dict[str, int]:
    """Jobs that gave up (after their retries) per queue: mail that did not go out."""
    return {name: FailedJobRegistry(queue=queue).count for name, queue in rt.queues.items()}


def release_held(rt: Runtime) -> int:
    """Hand out held threads to whoever can take them now; answers how many."""
    released = rt.store.release_held()
    for item in released:
        log.info("CS-%s released to %s", item.ref, item.owner)
        for msgkey in item.messages:
            enqueue_delivery(rt, msgkey, item.owner, "held until a CSM could take it")
    return len(released)


def ensure_sweep(rt: Runtime) -> None:
    """Keep one SLA sweep scheduled on the maintenance queue (RQ's scheduler runs it).

    Every router pass and worker start calls this; the guard key makes it one chain for
    the whole deployment, and if a chain is ever lost the guard expires and a new one
    starts within two sweep intervals.
    """
    from csm_router import jobs

    if rt.redis.set(key("sweep", "scheduled"), 1, nx=True, ex=2 * SWEEP_SECONDS):
        rt.queues[MAINTENANCE].enqueue_in(
            timedelta(seconds=SWEEP_SECONDS), jobs.sla_sweep, description="SLA sweep"
        )


def delivery_reason(decision: Decision, sender: str) -> str:
    """The "Why you" line for forwards that a command or Support causes."""
    command = decision.command
    if command is None or decision.error:
        return decision.why
    if command.name == "reassign":
        return f"{sender} reassigned the thread to you (#reassign)"
    if command.name == "success":
        return "Support gave the thread back to Customer Success (#success)"
    return decision.why


def command_notice(decision: Decision, msg: Inbound, settings: Settings) -> dict[str, str] | None:
    """The short confirmation or error the sender of a command gets back, if any."""
    command = decision.command
    if command is None:
        return None
    if decision.action not in (Action.RECORD_REPLY, Action.COMMAND) and not decision.error:
        return None
    ref = format_ref(decision.ref) if decision.ref else None
    text = render(
        "command_reply.txt.j2",
        command=command.name,
        argument=command.argument,
        ref=ref,
        error=decision.error,
        support=settings.support_address.address if settings.support_address else "",
    )
    subject = reply_subject(msg.subject or f"#{command.name}")
    return {"to": msg.sender, "subject": subject, "text": text, "in_reply_to": msg.message_id}


def record_decision(
    store: Store, msgkey: str, msg: Inbound, decision: Decision, now: float, uid: int = 0
) -> Outcome:
    """Record a decision with the follow-up texts it implies (forward reason, command reply)."""
    return store.record(
        msgkey, msg, decision, now, uid=uid,
        why_deliver=delivery_reason(decision, msg.sender),
        notice=command_notice(decision, msg, store.settings),
    )
