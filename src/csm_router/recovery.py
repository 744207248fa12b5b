"""Take up at once the jobs a killed worker had in hand, instead of after RQ's heartbeat expiry.

A worker started with a stable `--name` (one per host and slot, as the systemd units in
`deploy/` give it) knows that any job still marked as running under that name belongs to a
previous incarnation that died: the name is never used by two live processes. Our jobs are
idempotent (deterministic job ids, sent-markers, deterministic Message-IDs), so running one
again is safe.
"""

from __future__ import annotations

import logging

from redis import Redis
from rq import Queue, Worker
from rq.exceptions import NoSuchJobError
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE, Execution
from rq.job import Job, JobStatus
from rq.worker_registration import unregister

from csm_router.store import text

log = logging.getLogger(__name__)


def reclaim(connection: Redis, worker_name: str) -> list[str]:
    """Requeue the jobs a dead worker called `worker_name` was running; answers their ids."""
    key = WORKER_EXECUTIONS_KEY_TEMPLATE.format(worker_name)
    requeued = []
    for composite in connection.smembers(key):
        execution = Execution.from_composite_key(text(composite), connection)
        try:
            job = Job.fetch(execution.job_id, connection=connection)
        except NoSuchJobError:
            continue
        with connection.pipeline() as pipe:
            execution.delete(job, pipe)
            pipe.execute()
        if job.get_status() == JobStatus.STARTED:
            Queue(job.origin, connection=connection).enqueue_job(job)
            requeued.append(job.id)
    connection.delete(key)
    stale = Worker(["deliver"], connection=connection, name=worker_name)
    if connection.exists(stale.key):
        # Its registration outlives a SIGKILL; RQ would refuse the name while it stands.
        unregister(stale)
        connection.delete(stale.key)
    for job_id in requeued:
        log.warning("job %s was running in the dead worker %s: requeued", job_id, worker_name)
    return requeued
