"""`csm-router worker`: RQ's worker on our queues, an outbox pump beside it, and no way to
stop for good because a server is down."""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

import redis
from rq import SimpleWorker

from csm_router.errors import Backoff
from csm_router.mail.outbound import warm_up
from csm_router.runtime import Runtime, stop_on_signals
from csm_router.sends import jobs, once
from csm_router.state.durability import watch
from csm_router.state.outbox import QUEUES, Heartbeat, Pump, WorkerNameTakenError, retry_delays
from csm_router.state.processes import forget_stale
from csm_router.support import load_handler

log = logging.getLogger(__name__)

SWEEP_SECONDS = 30


class _ServerTroubleInOneLine(logging.Filter):
    """RQ logs a Redis outage with a whole traceback; an operator needs one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, redis.RedisError):
            record.msg, record.args = f"{record.getMessage()} ({error})", ()
            record.exc_info = record.exc_text = None
        return True


class _Worker(SimpleWorker):
    """RQ's in-process worker, whose stop request also stops the loop around it: a
    SIGTERM that RQ takes while Redis is failing must still end the process."""

    def __init__(self, *args: Any, stop: threading.Event, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stop_event = stop

    def request_stop(self, signum: Any, frame: Any) -> None:
        self.stop_event.set()
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]

    def drop_subscription(self) -> None:
        """Stop RQ's command channel thread even when Redis cannot hear the goodbye."""
        with contextlib.suppress(Exception):
            self.unsubscribe()  # type: ignore[no-untyped-call]
        if self.pubsub_thread is not None:
            self.pubsub_thread.stop()


def run_worker(
    rt: Runtime,
    *,
    name: str | None = None,
    burst: bool = False,
    stop: threading.Event | None = None,
) -> None:
    """Deliver what the outbox owes until stopped (or, with `burst`, until nothing is left).

    Jobs run in this process (RQ's SimpleWorker): a job killed with its worker is then
    always a dead worker's, which the outbox takes up again, never an orphan still sending.
    A Redis outage is logged once and waited out with backoff. A second worker under a
    live worker's --name is refused at start (exit code 2): it would take up that worker's
    entries as a dead predecessor's and could send them again.
    """
    stop = stop or threading.Event()
    beat = _start(rt, name, stop, burst=burst)
    outage = _Outage()
    named = False
    rq_connection = rt.rq_client()  # one for the process: each outage would leak a pool
    while not stop.is_set():
        pump = Pump(rt.outbox, beat, jobs.sla_sweep, SWEEP_SECONDS,
                    each_round=lambda: _each_round(rt))
        worker: _Worker | None = None
        try:
            if not named:
                beat.refuse_live_twin()
                named = True
            _rejoin(rt, beat)
            outage.over()
            worker = _Worker([rt.queues[q] for q in QUEUES], connection=rq_connection,
                             stop=stop)
            _work(rt, worker, pump, burst=burst)
            return
        except redis.AuthenticationError:
            raise  # a wrong password does not heal by waiting: say so and stop
        except WorkerNameTakenError as exc:
            log.error("worker: %s", exc)
            raise SystemExit(2) from None  # the twin's heartbeat and entries stay its own
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
            delay = outage.seen(exc)
            beat.new_identity()
            if worker is not None:
                # RQ's worker set its own signal handlers and a pubsub thread: undo both,
                # so a stop request now reaches this loop and no thread is left retrying.
                worker.drop_subscription()
                stop_on_signals(stop, "the current job")
            stop.wait(delay)
        finally:
            pump.stopping.set()
    with contextlib.suppress(redis.RedisError):
        beat.stop()  # with Redis down, its key expires by itself


def _each_round(rt: Runtime) -> None:
    """The pump's chores besides the outbox: records Redis could not take when their mail
    went out, and the OAuth tokens renewed between sends."""
    once.flush()
    rt.keep_tokens_fresh()


def _start(rt: Runtime, name: str | None, stop: threading.Event, *, burst: bool) -> Heartbeat:
    """Everything checked and set up once per process, before the first job: the heartbeat."""
    if rt.settings.support_address is not None:
        load_handler(rt.settings.support_handler)  # a typo stops us now, not a customer later
    stop_on_signals(stop, "the current job")
    watch(rt.redis, "worker", stop, warn_only=burst)  # Redis losing its data, seen at once
    rq_log = logging.getLogger("rq.worker")
    if not any(isinstance(f, _ServerTroubleInOneLine) for f in rq_log.filters):
        rq_log.addFilter(_ServerTroubleInOneLine())
    rt.outbox.retry_delays = retry_delays(rt.settings.retry_delays)
    beat = Heartbeat(rt.store, name)
    jobs.configure(rt, beat)
    warm_up()
    return beat


def _rejoin(rt: Runtime, beat: Heartbeat) -> None:
    """Announce this worker alive and take up what dead workers held, at start and after
    each outage."""
    beat.beat()
    forget_stale(rt.redis)
    # A stable name is unique among live workers: entries its earlier incarnations
    # held are a dead process's, to take up now rather than once their key expires.
    rt.outbox.reclaim(dead_prefix=beat.same or None, keep=beat.holder)


def _work(rt: Runtime, worker: _Worker, pump: Pump, *, burst: bool) -> None:
    """Run RQ's worker until it stops: in a burst, what is owed now; else with the pump."""
    if burst:
        rt.outbox.offer()
        worker.work(burst=True, logging_level=rt.settings.log_level.upper())
        return
    pump.start()
    worker.work(with_scheduler=False, logging_level=rt.settings.log_level.upper())


class _Outage:
    """Whether Redis is failing, so an outage is logged once as it starts and once as it
    ends, and how long to wait before the next try."""

    def __init__(self) -> None:
        self.backoff = Backoff(cap=30)
        self.failing = False

    def over(self) -> None:
        if self.failing:
            log.info("worker: Redis is back")
            self.failing = False

    def seen(self, exc: Exception) -> float:
        """The delay before the next try."""
        delay = self.backoff.next()
        if not self.failing:
            log.warning("worker: Redis unavailable (%s); waiting it out", exc)
        self.failing = True
        return delay
