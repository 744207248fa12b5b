"""Redis failing over under a stream of mail: Sentinel promotes the replica, nothing is lost
and nothing is sent twice.

A master (append-only, fsync always) and its replica, watched by three sentinels with a
quorum of two; the router and two workers find the master through the sentinels
(ROUTER_REDIS_URL is a redis+sentinel:// set) and must follow it when it moves.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_faults import assert_each_once
from test_processes import kill, start

from csm_router.config import load_settings
from csm_router.core.decide import decide
from csm_router.core.message import parse
from csm_router.demo.relay import RecordingSmtp
from csm_router.runtime import Runtime
from csm_router.sends import jobs
from csm_router.state.store import message_key
from support.product import Product
from support.servers import (
    RedisServer,
    SentinelServer,
    master_and_replica,
    sentinel_url,
    wait_until,
)

pytestmark = pytest.mark.integration

STREAM = 50  # messages in the stream
KILL_AFTER = 10  # forwards the relay has taken when the master dies
SPACING = 0.15  # seconds between two messages of the stream


@dataclass
class Replicated:
    """A master and its replica, watched by sentinels."""

    master: RedisServer
    replica: RedisServer
    sentinels: list[SentinelServer]

    @property
    def url(self) -> str:
        return sentinel_url(self.sentinels)

    def promoted(self) -> bool:
        """Whether every sentinel names the replica as the master now."""
        return all(s.master_address() == (self.replica.host, self.replica.port)
                   for s in self.sentinels)


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[Replicated]:
    with ExitStack() as stack:
        master, replica = stack.enter_context(master_and_replica(tmp_path, persistent=True))
        # Started once the replica is attached, so each sentinel's first look at the master
        # lists it (the next look would be ten seconds later).
        sentinels = [stack.enter_context(SentinelServer(tmp_path / f"sentinel{n}", master,
                                                        quorum=2))
                     for n in (1, 2, 3)]
        # Sentinels find each other through hello messages on the master, every two
        # seconds: until each knows the other two, none could win the vote to fail over.
        wait_until(lambda: all(s.sees(sentinels=2, replicas=1) for s in sentinels),
                   "each sentinel seeing the other two and the replica")
        yield Replicated(master, replica, sentinels)


def deliver_stream(product: Product, count: int, delivered: list[int]) -> None:
    """Customers write `count` messages, a little apart, as mail trickles in."""
    for n in range(count):
        product.write(f"C{n} <c{n}@c{n}.com>", f"Stream {n:02d}")
        delivered.append(n)
        time.sleep(SPACING)  # the shape of the load, not a wait for anything


def stop_each(processes: list[subprocess.Popen[bytes]], timeout: float = 20) -> list[int | str]:
    """SIGTERM one after the other: each one's exit code, or what went wrong (it is then
    killed, so nothing outlives the test)."""
    codes: list[int | str] = []
    for proc in processes:
        proc.send_signal(signal.SIGTERM)
        try:
            codes.append(proc.wait(timeout))
        except subprocess.TimeoutExpired:
            kill(proc)
            codes.append(f"still running {timeout:g} s after SIGTERM")
    return codes


def keep_logs(product: Product, names: list[str]) -> None:
    """Put what the processes warned about where a failing test shows it."""
    for name in names:
        lines = (product.workdir / name).read_text(errors="replace").splitlines()
        kept = [line for line in lines
                if " INFO " not in line or "shut down" in line or "signal" in line]
        product.logs.append(f"--- {name} (warnings and stop requests) ---\n" + "\n".join(kept))


def test_redis_failing_over_under_a_stream_of_mail_loses_and_doubles_nothing(
    product: Product, replicated: Replicated
) -> None:
    product.env["ROUTER_REDIS_URL"] = replicated.url
    logs = ["router.log", "w1.log", "w2.log"]
    processes = [start(product, "run", log=logs[0]),
                 *(start(product, "worker", "--name", name, log=f"{name}.log")
                   for name in ("w1", "w2"))]
    delivered: list[int] = []
    try:
        with ThreadPoolExecutor(1) as pool:
            streaming: Future[None] = pool.submit(deliver_stream, product, STREAM, delivered)
            product.smtp.wait_for(KILL_AFTER, timeout=60)
            replicated.master.kill()
            killed = time.monotonic()
            at_kill = len(delivered), len(product.smtp.messages)
            wait_until(replicated.promoted, "the sentinels promoting the replica", timeout=60)
            at_promotion = len(delivered), len(product.smtp.messages)
            took = time.monotonic() - killed
            streaming.result(timeout=120)
        product.logs.append(
            f"master killed with {at_kill[0]} delivered and {at_kill[1]} forwarded; replica "
            f"promoted {took:.1f}s later with {at_promotion[0]} "
            f"delivered and {at_promotion[1]} forwarded")
        assert at_promotion[0] < STREAM  # the stream went on after the failover
        product.smtp.wait_for(STREAM, timeout=90)
        new_master = replicated.replica.client()
        # Nothing still owed or in a worker's hands: no send can come after this.
        wait_until(lambda: new_master.zcard("csm:outbox") == 0
                   and new_master.hlen("csm:outbox:running") == 0,
                   "the outbox drained on the new master", timeout=60)
        running = [p.poll() is None for p in processes]
    finally:
        codes = stop_each(processes)
        keep_logs(product, logs)
    assert_each_once(product, STREAM)
    # The state is on the new master: every message recorded and delivered, none dead.
    assert replicated.replica.replication()["role"] == "master"
    assert new_master.get("csm:seq") == str(1000 + STREAM).encode()
    states = [new_master.hget(k, "state") for k in new_master.scan_iter("csm:msg:*")]
    assert states == [b"delivered"] * STREAM
    assert new_master.zcard("csm:dead") == 0
    assert running == [True, True, True]  # all waited the failover out
    assert dict(zip(logs, codes, strict=True)) == dict.fromkeys(logs, 0)
    for log in logs:
        assert "Traceback" not in (product.workdir / log).read_text()


def test_a_worker_acts_only_on_what_a_replica_has_confirmed(
    tmp_path: Path, smtp: RecordingSmtp
) -> None:
    with master_and_replica(tmp_path) as (master, replica):
        settings = load_settings(alias="success@acme.com", pool="alice@acme.com",
                                 smtp_url=smtp.url, away="", overflow_address="")
        rt = Runtime.from_settings(settings, master.client())
        jobs.configure(rt)
        rt.store.ensure_sequence()  # as the router does before it numbers any thread
        try:
            assert rt.store.replicas_caught_up()
            raw = (b"From: Jane <jane@globex.com>\r\nTo: success@acme.com\r\n"
                   b"Subject: Help\r\nMessage-ID: <q1@globex.com>\r\n\r\nExport?\r\n")
            msg = parse(raw)
            decision = decide(msg, rt.store.snapshot(msg, time.time()))
            (entry,) = rt.store.record(message_key(msg, raw), msg, decision, time.time(),
                                       raw=raw).owed
            with replica.paused():  # a replica that cannot confirm: the master might die
                outcome = jobs.perform_one(entry)
            # A wait, not a failed attempt: nothing counted against the entry's retries.
            assert outcome == "waiting: Redis: no replica confirmed this entry yet"
            assert smtp.messages == []
            assert master.client().hget(f"csm:outbox:e:{entry}", "attempts") == b"0"
            master.client().zadd("csm:outbox", {entry: 0})  # its retry is due now
            assert jobs.perform_one(entry).startswith("sent ")
            assert [m.rcpt_tos for m in smtp.messages] == [["alice@acme.com"]]
        finally:
            jobs.configure(None)
