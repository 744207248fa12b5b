"""The outbox's guarantees, step by step, on an in-memory Redis with the real scripts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from csm_router.app.worker import run_worker
from csm_router.config import ConfigError
from csm_router.core.decide import decide
from csm_router.core.message import parse
from csm_router.demo.relay import RecordingSmtp
from csm_router.runtime import Runtime
from csm_router.sends import handoff, jobs, once
from csm_router.state import outbox as outbox_module
from csm_router.state.outbox import (
    RETRY_DELAYS,
    Heartbeat,
    Pump,
    WorkerNameTakenError,
    gone_here,
    job_timeout,
    retry_delays,
)
from csm_router.state.store import key, message_key
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


def test_a_dead_letter_never_stops_a_fresh_owe_of_the_same_send(rt: Runtime) -> None:
    msgkey, (first,) = record(rt)

    def fails_for_good(entry_id: str, csm: str) -> list[str]:
        rt.outbox.dead(entry_id, "relay down for hours")
        out = rt.store.undeliverable("deliver", 1001, csm, msgkey, "relay down for hours")
        return [i for i in out["owed"] if i.startswith("deliver-")]

    (to_bob,) = fails_for_good(first, ALICE)
    (to_alice,) = fails_for_good(to_bob, BOB)
    # Alice -> Bob -> Alice -> Bob: the forward to Bob is owed again, as a new generation.
    assert fails_for_good(to_alice, ALICE) == [f"{to_bob}-g2"]
    assert rt.store.thread(1001)["owner"] == BOB
    assert to_bob in [d.id for d in rt.outbox.dead_letters()]  # still listed


def take_and_mark(rt: Runtime, entry_id: str, beat: Heartbeat, write_by: float) -> None:
    beat.beat()
    assert rt.outbox.take(entry_id, beat.holder, beat.same) is not None
    assert rt.outbox.sending(entry_id, beat.holder, write_by)


def test_an_entry_being_sent_waits_until_its_sender_can_no_longer_record_it(
    rt: Runtime,
) -> None:
    _, (entry_id,) = record(rt)
    one, two = Heartbeat(rt.store), Heartbeat(rt.store)
    take_and_mark(rt, entry_id, one, write_by=1000.0)
    rt.redis.delete(key("alive", one.holder))  # its beat lapsed: Redis away, say
    rt.outbox.reclaim()
    two.beat()
    assert rt.outbox._op("take", now=999.0, id=entry_id, holder=two.holder)["state"] == "busy"
    assert rt.redis.zscore(key("outbox"), entry_id) == 1000.0  # due when it can be sent
    assert rt.outbox._op("take", now=1001.0, id=entry_id, holder=two.holder)["state"] == "taken"


def test_a_restart_under_the_same_name_takes_its_own_marked_entry_at_once(
    rt: Runtime,
) -> None:
    _, (entry_id,) = record(rt)
    before = Heartbeat(rt.store, "host-1")
    take_and_mark(rt, entry_id, before, write_by=10**12)
    after = Heartbeat(rt.store, "host-1")  # kill -9, restart: the old one wrote nothing more
    after.beat()
    rt.outbox.reclaim(dead_prefix=after.same, keep=after.holder)
    taken = rt.outbox.take(entry_id, after.holder, after.same)
    assert taken is not None and taken.marker == before.holder
    other = Heartbeat(rt.store, "host-2")
    other.beat()
    assert rt.outbox.take(entry_id, other.holder, other.same) is None


def test_what_is_written_after_a_send_is_written_once(rt: Runtime) -> None:
    _, (entry_id,) = record(rt)
    writes = [["RPUSH", "csm:test:list", "x"], ["HINCRBY", "csm:test:hash", "n", 1]]
    assert rt.outbox.sent("<m@acme.com>", entry_id, "sent", writes)
    assert not rt.outbox.sent("<m@acme.com>", entry_id, "sent", writes)  # a repeat
    assert rt.redis.lrange("csm:test:list", 0, -1) == [b"x"]
    assert rt.redis.hget("csm:test:hash", "n") == b"1"
    assert rt.redis.hget(key("outbox", "e", entry_id), "state") == b"done"


def test_a_replica_not_confirming_is_a_wait_not_a_failed_attempt(
    rt: Runtime, smtp: RecordingSmtp, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, (entry_id,) = record(rt)
    monkeypatch.setattr(rt.store, "replicas_caught_up", lambda: False)
    for _ in range(len(RETRY_DELAYS) + 2):
        assert jobs.perform(entry_id).startswith("waiting")
        rt.redis.zadd(key("outbox"), {entry_id: 0})  # due again at once
    fields = rt.redis.hgetall(key("outbox", "e", entry_id))
    assert fields[b"state"] == b"pending" and fields[b"attempts"] == b"0"
    assert not rt.redis.hget(key("metrics"), "attempt\tdeliver")  # /metrics counts none
    assert rt.outbox.dead_letters() == [] and rt.store.thread(1001)["owner"] == ALICE
    assert smtp.messages == []
    monkeypatch.undo()
    assert jobs.perform(entry_id).startswith("sent")


def test_an_offer_reads_the_job_status_and_finds_a_lost_job(rt: Runtime) -> None:
    _, owed = record(rt)
    assert rt.outbox.offer(owed) == 1
    (job_id,) = [j.decode() for j in rt.redis.lrange("rq:queue:deliver", 0, -1)]
    assert rt.redis.hget(f"rq:job:{job_id}", "timeout") == str(job_timeout(1)).encode()
    rt.redis.rpush("rq:queue:deliver", "someone-elses-job")  # the queue is not empty
    assert rt.outbox.offer(now=10**10) == 0  # 'queued': its job waits, whatever the queue
    rt.redis.lrem("rq:queue:deliver", 0, job_id)  # popped by a worker that died at once
    assert rt.outbox.offer(now=2 * 10**10) == 1  # an old offer is looked for, and missed
    job_id = rt.redis.hget(key("outbox", "e", owed[0]), "job").decode()
    rt.redis.hset(f"rq:job:{job_id}", "status", "finished")  # a plain `rq worker` ate it
    assert rt.outbox.offer(now=3 * 10**10) == 1


def test_a_job_queued_under_an_older_release_path_is_offered_again_under_todays(
    rt: Runtime, smtp: RecordingSmtp, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before the package had parts, the job was `csm_router.jobs.perform`. A queue written
    # by that release and read by this one fails the job; the entry stays owed.
    _, (entry_id,) = record(rt)
    with monkeypatch.context() as old_release:
        old_release.setattr(outbox_module, "PERFORM", "csm_router.jobs.perform")
        assert rt.outbox.offer() == 1
        old_job = rt.redis.hget(key("outbox", "e", entry_id), "job").decode()
    run_worker(rt, burst=True)
    assert rt.redis.hget(f"rq:job:{old_job}", "status") == b"failed"  # no such module
    assert smtp.messages == [] and rt.outbox.pending() == 1
    assert rt.outbox.offer(now=10**10) == 1  # its lease ran out: offered anew
    run_worker(rt, burst=True)
    (forward,) = smtp.messages
    assert forward.rcpt_tos == [ALICE] and rt.outbox.pending() == 0


def test_a_plain_rq_worker_does_nothing_and_leaves_the_entry_owed(
    rt: Runtime, smtp: RecordingSmtp, caplog: pytest.LogCaptureFixture
) -> None:
    _, (entry_id,) = record(rt)
    jobs.configure(None)  # what a plain `rq worker` has: nobody configured the jobs
    assert jobs.perform(entry_id).startswith("refused")
    assert "plain `rq worker`" in caplog.text
    assert smtp.messages == [] and rt.outbox.pending() == 1


def test_automatic_notes_to_one_sender_are_limited_per_day(rt: Runtime) -> None:
    allowed = [rt.outbox.note_allowed(f"note-{n}", "Jane@Globex.com", "2026-12-02")
               for n in range(5)]
    assert allowed == [True, True, True, False, False]
    assert rt.outbox.note_allowed("note-0", "jane@globex.com", "2026-12-02")  # a retry
    assert rt.outbox.note_allowed("note-9", "jane@globex.com", "2026-12-03")


def test_a_second_worker_under_a_live_workers_name_is_refused(rt: Runtime) -> None:
    live = Heartbeat(rt.store, "host-1")
    live.beat()
    beating = threading.Event()

    def keep_beating() -> None:
        while not beating.wait(0.2):
            live.beat()

    thread = threading.Thread(target=keep_beating)
    thread.start()
    try:
        with pytest.raises(WorkerNameTakenError, match="host-1"):
            Heartbeat(rt.store, "host-1").refuse_live_twin(watch=2.0, every=0.3)
    finally:
        beating.set()
        thread.join()
    # Killed with -9: its beat stays a few seconds but no longer advances.
    Heartbeat(rt.store, "host-1").refuse_live_twin(watch=1.0, every=0.3)


def test_the_retry_schedule_can_be_set_and_a_bad_one_is_refused() -> None:
    assert retry_delays("") == tuple(float(x) for x in RETRY_DELAYS)
    assert retry_delays(" 0.2, 1 ") == (0.2, 1.0)
    with pytest.raises(ConfigError, match="ROUTER_RETRY_DELAYS"):
        retry_delays("5s,15s")


def test_a_send_whose_record_failed_is_recorded_once_redis_is_back(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, (entry_id,) = record(rt)
    beat = Heartbeat(rt.store)
    beat.beat()
    assert rt.outbox.take(entry_id, beat.holder) is not None
    attempt = once.begin(entry_id, beat.holder)
    attempt.write_by = time.time()  # no time left to wait for Redis
    recorded = rt.outbox.sent

    def redis_away(*args: object, **kwargs: object) -> bool:
        raise redis.ConnectionError("Redis is away")

    try:
        monkeypatch.setattr(rt.outbox, "sent", redis_away)
        with pytest.raises(redis.ConnectionError):
            once.record(rt, "<gone@acme.com>")
        assert attempt.uncertain(redis.ConnectionError())  # sent: never retried blind
        monkeypatch.setattr(rt.outbox, "sent", recorded)  # Redis is back
        assert once.flush() == 0
    finally:
        once.end()
    assert rt.redis.hget(key("outbox", "e", entry_id), "state") == b"done"
    assert rt.redis.exists(key("sent", "<gone@acme.com>"))


def test_a_killed_worker_on_this_host_is_known_dead_at_once(rt: Runtime) -> None:
    _, (entry_id,) = record(rt)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process of this host that has ended (pids are not reused this fast)
    dead = f"{socket.gethostname()}:{gone.pid}:cafe"
    rt.redis.hset(key("outbox", "e", entry_id), mapping={"sending": dead, "write_by": 10**12})
    assert gone_here(dead) and not gone_here(f"{socket.gethostname()}:{os.getppid()}:cafe")
    assert not gone_here(f"elsewhere:{gone.pid}:cafe")  # another host's: not ours to judge
    other = Heartbeat(rt.store, "host-2")
    other.beat()
    assert rt.outbox.take(entry_id, other.holder) is not None  # no wait for its marker


def test_staff_get_every_automatic_note_and_strangers_a_few(rt: Runtime) -> None:
    assert all(handoff.note_allowed(rt, f"<n{n}@acme.com>", ALICE.upper()) for n in range(5))
    allowed = [handoff.note_allowed(rt, f"<n{n}@acme.com>", "forged@example.org")
               for n in range(5)]
    assert allowed == [True, True, True, False, False]


def test_an_entry_ends_counted_once_however_it_is_finished(rt: Runtime) -> None:
    # A send finishes its entry with its record (`sent`), anything else with `done`: both
    # are lua/outbox.lua `finish`, which counts the attempt and the end once.
    record(rt)
    second = RAW.replace(b"<q1@globex.com>", b"<q2@globex.com>").replace(b"jane@", b"joe@")
    _, (other,) = record(rt, second)
    (first,) = [i for i in rt.redis.zrange(key("outbox"), 0, -1) if i.decode() != other]
    rt.outbox.sent("<m@acme.com>", first.decode(), "sent")
    rt.outbox.done(first.decode(), "again")
    rt.outbox.done(other, "done")
    rt.outbox.sent("<n@acme.com>", other, "sent")
    counts = {f.decode(): int(n) for f, n in rt.redis.hgetall(key("metrics")).items()}
    assert counts["done\tdeliver"] == 2 and counts["attempt\tdeliver"] == 2


def test_a_forward_that_fails_with_nobody_to_move_to_holds_the_thread_and_its_mail(
    rt: Runtime,
) -> None:
    msgkey, (first,) = record(rt)
    owner = rt.store.thread(1001)["owner"]
    rt.redis.hset(key("away"), BOB if owner == ALICE else ALICE, "")
    rt.outbox.dead(first, "mailbox gone")
    out = rt.store.undeliverable("deliver", 1001, owner, msgkey, "mailbox gone")
    assert (out["moved"], out["owner"]) == (True, "")
    thread = rt.store.thread(1001)
    assert (thread["state"], thread["owner"]) == ("held", "")
    assert rt.redis.zscore(key("held"), "1001") is not None
    assert rt.redis.lrange(key("thread", 1001, "held"), 0, -1) == [msgkey.encode()]
    assert not rt.redis.sismember(key("open", owner), "1001")
    # Owed to whoever frees up, however long that takes: its raw message does not expire.
    assert rt.redis.ttl(key("raw", msgkey)) == -1
