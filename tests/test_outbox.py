"""The outbox's guarantees, step by step, on an in-memory Redis with the real scripts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from csm_router import jobs
from csm_router.decide import decide
from csm_router.dispatch import Runtime
from csm_router.embedded import RecordingSmtp
from csm_router.message import parse
from csm_router.outbox import RETRY_DELAYS, Heartbeat, Pump
from csm_router.store import key, message_key
from csm_router.worker import run_worker
from support.runtime import worker_runtime

RAW = (b"From: Jane Doe <jane@globex.com>\r\nTo: success@acme.com\r\nSubject: Help\r\n"
       b"Message-ID: <q1@globex.com>\r\n\r\nHow do I export?\r\n")
ALICE, BOB = "alice@acme.com", "bob@acme.com"


@pytest.fixture
def rt(smtp: RecordingSmtp) -> Iterator[Runtime]:
    with worker_runtime(smtp.url, f"{ALICE}, {BOB}") as runtime:
        yield runtime


def record(rt: Runtime, raw: bytes = RAW) -> tuple[str, tuple[str, ...]]:
    msg = parse(raw)
    msgkey = message_key(msg, raw)
    rt.store.ensure_sequence()
    outcome = rt.store.record(msgkey, msg, decide(msg, rt.store.snapshot(msg, 0.0)), 0.0,
                              raw=raw)
    return msgkey, outcome.owed


def queued(rt: Runtime) -> int:
    return sum(q.count for q in rt.queues.values())


def test_a_decision_owes_its_forward_in_the_same_script(rt: Runtime) -> None:
    _, owed = record(rt)
    (entry_id,) = owed
    assert entry_id.startswith("deliver-")
    assert rt.outbox.pending() == 1
    assert queued(rt) == 0  # nothing enqueued yet: owing does not depend on RQ


def test_recording_again_owes_nothing_more(rt: Runtime) -> None:
    record(rt)
    _, again = record(rt)
    assert again == () and rt.outbox.pending() == 1


def test_an_offer_is_made_once_until_its_lease_runs_out(rt: Runtime) -> None:
    _, owed = record(rt)
    assert rt.outbox.offer(owed) == 1
    assert rt.outbox.offer() == 0  # a second router or pump does not offer it again
    assert queued(rt) == 1
    assert rt.outbox.offer(now=10**10) == 0  # its job still waits in the queue: enough
    # The job is lost (popped by a worker killed before it started): offered again.
    rt.redis.lpop("rq:queue:deliver")
    assert rt.outbox.offer(now=2 * 10**10) == 1
    assert queued(rt) == 1


def test_a_live_worker_keeps_its_entry_and_a_dead_one_loses_it(rt: Runtime) -> None:
    _, (entry_id,) = record(rt)
    one, two = Heartbeat(rt.store, "w1"), Heartbeat(rt.store, "w2")
    one.beat()
    two.beat()
    assert rt.outbox.take(entry_id, one.holder) is not None
    assert rt.outbox.take(entry_id, two.holder) is None  # busy in a live worker's hands
    assert rt.outbox.reclaim() == []
    rt.redis.delete(key("alive", one.holder))  # w1 killed: its heartbeat key expires
    assert rt.outbox.reclaim() == [entry_id]
    assert rt.outbox.take(entry_id, two.holder) is not None


def test_a_worker_restarted_under_its_name_takes_up_its_predecessors_entry_at_once(
    rt: Runtime,
) -> None:
    _, (entry_id,) = record(rt)
    before = Heartbeat(rt.store, "host-1")
    before.beat()
    assert rt.outbox.take(entry_id, before.holder) is not None
    after = Heartbeat(rt.store, "host-1")  # SIGKILL, restart: the old key still lives
    after.beat()
    assert rt.outbox.reclaim(dead_prefix="host-1:", keep=after.holder) == [entry_id]
    assert rt.outbox.take(entry_id, after.holder) is not None


def test_a_done_entry_is_not_taken_again(rt: Runtime, smtp: RecordingSmtp) -> None:
    _, (entry_id,) = record(rt)
    assert jobs.perform(entry_id).startswith("sent")
    assert jobs.perform(entry_id) == "nothing to do"
    assert len(smtp.messages) == 1 and rt.outbox.pending() == 0


def test_transient_failures_are_retried_on_schedule_then_dead_lettered(
    rt: Runtime, smtp: RecordingSmtp
) -> None:
    _, (entry_id,) = record(rt)
    for attempt in range(len(RETRY_DELAYS)):
        smtp.fail_next(451, "4.3.0 try again later")
        assert jobs.perform(entry_id).startswith("will retry")
        due = rt.redis.zscore(key("outbox"), entry_id)
        assert due is not None
        assert attempt == 0 or due > 0
    smtp.fail_next(451, "4.3.0 try again later")
    assert jobs.perform(entry_id).startswith("will retry")  # the last one gives up
    (letter,) = rt.outbox.dead_letters()
    assert letter.id == entry_id and letter.attempts == len(RETRY_DELAYS) + 1
    # Alice never got it: the thread moved to Bob, who did; the lead was told.
    assert rt.store.thread(1001)["owner"] == BOB


def test_a_dead_letter_can_be_retried_or_dropped(rt: Runtime, smtp: RecordingSmtp) -> None:
    _, (entry_id,) = record(rt)
    rt.outbox.dead(entry_id, "550 by hand")
    assert [d.id for d in rt.outbox.dead_letters()] == [entry_id]
    assert rt.outbox.revive(entry_id)
    assert rt.outbox.dead_letters() == [] and rt.outbox.pending() == 1
    assert jobs.perform(entry_id).startswith("sent")
    rt.outbox.dead(entry_id, "gone")  # a done entry is no dead letter
    assert rt.outbox.dead_letters() == []
    assert not rt.outbox.drop(entry_id)


def test_a_worker_start_sends_what_a_killed_router_owed(
    rt: Runtime, smtp: RecordingSmtp
) -> None:
    record(rt)  # the router died before offering anything
    run_worker(rt, burst=True)
    (forward,) = smtp.messages
    assert forward.rcpt_tos == [ALICE]


def test_one_sweep_per_period_for_the_whole_deployment(rt: Runtime) -> None:
    sweeps: list[str] = []
    pumps = [Pump(rt.outbox, Heartbeat(rt.store, f"w{n}"), lambda: sweeps.append("x"))
             for n in range(3)]
    for pump in pumps:
        pump.once()
    assert sweeps == ["x"]
    rt.redis.delete(key("sweep", "lock"))  # the period is over
    pumps[2].once()
    assert sweeps == ["x", "x"]
