"""A restarted worker takes up at once what its killed predecessor had in hand."""

from __future__ import annotations

import fakeredis
from rq import Queue, SimpleWorker, Worker
from rq.job import JobStatus

from csm_router.recovery import reclaim


def noop() -> str:
    return "done"


def test_jobs_of_a_dead_worker_are_requeued_and_its_name_freed() -> None:
    redis = fakeredis.FakeRedis()
    queue = Queue("deliver", connection=redis)
    queued = queue.enqueue(noop)
    dead = Worker([queue], connection=redis, name="host-1")
    dead.register_birth()
    job, _ = Queue.dequeue_any([queue], timeout=None, connection=redis)  # type: ignore[misc]
    dead.prepare_execution(job)  # what RQ does before forking the work horse,
    dead.prepare_job_execution(job)  # what the horse does; then SIGKILL: nothing else
    assert job.get_status() == JobStatus.STARTED and queue.count == 0

    assert reclaim(redis, "host-1") == [queued.id]
    assert queue.job_ids == [queued.id]
    assert job.get_status() == JobStatus.QUEUED
    successor = SimpleWorker([queue], connection=redis, name="host-1")  # no fork: fakeredis
    assert successor.work(burst=True)  # registers under the same name and runs the job
    assert job.get_status() == JobStatus.FINISHED


def test_another_workers_jobs_are_left_alone() -> None:
    redis = fakeredis.FakeRedis()
    queue = Queue("deliver", connection=redis)
    queue.enqueue(noop)
    alive = Worker([queue], connection=redis, name="host-2")
    alive.register_birth()
    job, _ = Queue.dequeue_any([queue], timeout=None, connection=redis)  # type: ignore[misc]
    alive.prepare_execution(job)
    alive.prepare_job_execution(job)
    assert reclaim(redis, "host-1") == []
    assert job.get_status() == JobStatus.STARTED
