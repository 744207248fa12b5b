"""Sending once: a marker written before the SMTP transaction, one guarded record after it.

A worker that takes an outbox entry may die, time out or lose Redis at any instant. Before
the relay hears a word, the entry is marked as being sent by this worker's incarnation,
with the time after which it can no longer record anything (`write_by`): nobody else sends
it before then (lua/outbox.lua `take`). After the relay's 250, one script writes the sent
marker, everything the send implies and the entry's end, guarded by the sent marker: a
repeat writes nothing twice. The one window no system closes is the relay's 250 and the
record lost together (a process killed between them, or Redis gone for longer than the
wait): then the entry is sent again after `write_by`, with the same Message-ID.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage

import redis
from rq.timeouts import BaseTimeoutException

from csm_router.mail.outbound import mailer
from csm_router.runtime import Runtime
from csm_router.state.outbox import AFTER_SEND_PATIENCE, SEND_SECONDS, WRITE_MARGIN
from csm_router.state.store import key

log = logging.getLogger(__name__)

SENT_TTL_SECONDS = 90 * 86400


class NotYetSafeError(Exception):
    """Not to be sent yet (no replica confirmed, the entry is no longer ours, what it says
    has not happened yet): the entry waits `delay` seconds; no attempt is counted."""

    def __init__(self, why: str, delay: float = 5.0) -> None:
        super().__init__(why)
        self.delay = delay


@dataclass
class Attempt:
    """The outbox entry being performed, and how far its send got."""

    entry: str
    holder: str
    phase: str = "before"  # before -> sending -> sent (accepted, unrecorded) -> recorded
    write_by: float = 0.0
    finished: bool = False  # the send's record finished the entry too

    def uncertain(self, exc: BaseException) -> bool:
        """Whether mail may have gone out without a record: then no blind retry."""
        if self.phase == "sent":
            return True
        return self.phase == "sending" and isinstance(exc, BaseTimeoutException)


_current: Attempt | None = None
# Records of mail that went out while Redis stayed away past the wait: written as soon as
# it is back (`flush`), so the entry is found done rather than sent again.
_unrecorded: list[Callable[[], object]] = []
_unrecorded_lock = threading.Lock()


def begin(entry_id: str, holder: str) -> Attempt:
    """Start performing entry `entry_id` as `holder` (jobs.perform_one)."""
    global _current
    _current = Attempt(entry_id, holder)
    return _current


def end() -> None:
    global _current
    _current = None


def current_entry() -> str | None:
    return _current.entry if _current is not None else None


def already_sent(rt: Runtime, message_id: str) -> bool:
    return bool(rt.redis.exists(key("sent", message_id)))


def mark(rt: Runtime) -> None:
    """Right before a send: mark the entry as being sent, and have a replica confirm it
    (with the take and the decision before it), else raise NotYetSafeError."""
    attempt = _current
    if attempt is not None:
        write_by = time.time() + SEND_SECONDS + AFTER_SEND_PATIENCE + WRITE_MARGIN
        if not rt.outbox.sending(attempt.entry, attempt.holder, write_by):
            raise NotYetSafeError("another worker took it meanwhile")
        attempt.write_by = write_by
    if not rt.store.replicas_caught_up():
        # What this entry stands on might not survive a failover: acting on it could send
        # what the promoted replica owes anew.
        raise NotYetSafeError("Redis: no replica confirmed this entry yet")
    if attempt is not None:
        attempt.phase = "sending"


def record(rt: Runtime, message_id: str, writes: Sequence[Sequence[object]] = (),
           result: str = "", finish: bool = True) -> None:
    """After the relay's 250: record mail `message_id`, `writes` and (with `finish`) the
    entry's end in one guarded script, waiting for Redis if it is away just now."""
    attempt = _current
    entry = attempt.entry if attempt is not None and finish else None
    if attempt is not None:
        attempt.phase = "sent"

    def write() -> object:
        return rt.outbox.sent(message_id, entry, result or f"sent {message_id}", writes,
                              rt.settings.kept(SENT_TTL_SECONDS))

    try:
        after_send(write, rt.store.replicas_caught_up,
                   until=attempt.write_by if attempt is not None else None)
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
        with _unrecorded_lock:
            _unrecorded.append(write)
        raise
    if attempt is not None:
        attempt.phase = "recorded" if finish else "before"
        attempt.finished = attempt.finished or finish


def flush() -> int:
    """Write the records kept by `record` while Redis was away; answers how many remain.
    Each is idempotent, so a record written meanwhile by someone else changes nothing."""
    with _unrecorded_lock:
        pending = list(_unrecorded)
    for write in pending:
        try:
            write()
        except redis.RedisError:
            break
        log.info("a mail that went out while Redis was away is recorded now")
        with _unrecorded_lock:
            _unrecorded.remove(write)
    with _unrecorded_lock:
        return len(_unrecorded)


def send_once(rt: Runtime, message_id: str, action: Callable[[], object],
              writes: Sequence[Sequence[object]] = (), finish: bool = True) -> bool:
    """Run `action` (a send) unless mail `message_id` went out before; answers whether it ran."""
    if already_sent(rt, message_id):
        return False
    mark(rt)
    action()
    record(rt, message_id, writes, finish=finish)
    return True


def send_mail_once(rt: Runtime, message: EmailMessage, recipients: list[str],
                   writes: Sequence[Sequence[object]] = (), finish: bool = True) -> bool:
    """Mail `message` through the relay unless its Message-ID went out before; answers
    whether it was sent (see `send_once`)."""
    settings = rt.settings

    def send() -> None:
        mailer(settings.required_smtp()).send(message, recipients,
                                              sender=settings.alias.address)

    return send_once(rt, str(message["Message-ID"]), send, writes, finish)


def after_send(write: Callable[[], object], confirmed: Callable[[], bool], *,
               patience: float = AFTER_SEND_PATIENCE, until: float | None = None) -> None:
    """Write the record of a mail that went out, waiting for Redis if it is away just now.

    The mail is gone: if this record were lost, the entry would be sent again. So Redis
    trouble is waited out (a restart, a failover) for up to `patience` seconds, and never
    past `until` (the marker's `write_by`, less a margin: after it another worker may send).
    The record counts once `confirmed` (a replica has it, where Redis has replicas). The
    job's own timeout, should it strike here, waits until the record is written. `write`
    may run again after it took effect (its answer lost, or no replica confirmed it in
    time): a repeat must write nothing twice. Outbox.sent's writes (pushes, counters) are
    not idempotent; its sent marker makes a repeat skip them.
    """
    budget = patience if until is None else min(patience, until - WRITE_MARGIN - time.time())
    deadline = time.monotonic() + budget
    delay, timed_out = 0.5, None
    while True:
        try:
            try:
                write()
                if not confirmed():
                    raise redis.ConnectionError("no replica confirmed the record in time")
                break
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
                if time.monotonic() + delay > deadline:
                    log.error("could not record a mail that went out (%s): it may be sent "
                              "again", exc)
                    raise
                log.warning("recording a mail that went out: %s (waiting for Redis)", exc)
                time.sleep(delay)
                delay = min(delay * 2, 10)
        except BaseTimeoutException as exc:
            if timed_out is None:
                log.warning("the job's time ran out after a send: recording it first")
            timed_out = exc
    if timed_out is not None:
        raise timed_out


class Writes(list[list[object]]):
    """Redis commands collected as a pipeline would take them (for `record`)."""

    def hincrby(self, name: str, field: str, amount: int = 1) -> None:
        self.append(["HINCRBY", name, field, amount])

    def hincrbyfloat(self, name: str, field: str, amount: float) -> None:
        self.append(["HINCRBYFLOAT", name, field, amount])
