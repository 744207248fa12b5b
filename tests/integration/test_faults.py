"""Faults an operator meets, on real servers: each ends with every message forwarded once.

Redis restarted or killed under a stream of mail, the relay gone for a while, a worker
without a name killed mid-send, a job lost between RQ's pop and its start.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_processes import kill, start, stop

from support.product import Product, body_of
from support.servers import RedisServer, SentinelServer

pytestmark = pytest.mark.integration


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis", persistent=True) as server:
        yield server


@pytest.fixture
def durable(product: Product, durable_redis: RedisServer) -> Product:
    product.env["ROUTER_REDIS_URL"] = durable_redis.url
    return product


@contextlib.contextmanager
def running(product: Product, *args: str, log: str) -> Iterator[subprocess.Popen[bytes]]:
    """A `csm-router` process for the length of the block, stopped (SIGTERM) after it."""
    proc = start(product, *args, log=log)
    try:
        yield proc
    finally:
        stop(proc)


def stream(product: Product, start_at: int, count: int) -> None:
    for n in range(start_at, start_at + count):
        product.write(f"C{n} <c{n}@c{n}.com>", f"Stream {n:02d}")


def assert_each_once(product: Product, count: int) -> None:
    subjects = Counter(str(r.message["Subject"]).split("] ", 1)[1]
                       for r in product.smtp.messages)
    assert subjects == Counter(f"Stream {n:02d}" for n in range(count))


@pytest.mark.parametrize("kill_it", [False, True], ids=["restarted", "killed"])
def test_redis_going_away_under_a_stream_of_mail_loses_and_doubles_nothing(
    durable: Product, durable_redis: RedisServer, kill_it: bool
) -> None:
    router = start(durable, "run", log="router.log")
    worker = start(durable, "worker", log="worker.log")
    try:
        stream(durable, 0, 10)
        durable.smtp.wait_for(3, timeout=60)
        proc = durable_redis._proc
        assert proc is not None
        if kill_it:
            proc.kill()
        else:
            proc.terminate()
        proc.wait(10)
        stream(durable, 10, 10)  # mail keeps arriving while Redis is away
        time.sleep(5)  # the outage being tested: five seconds without Redis
        durable_redis.start(port=durable_redis.port)
        stream(durable, 20, 10)
        durable.smtp.wait_for(30, timeout=180)
        assert router.poll() is None and worker.poll() is None  # both waited it out
    finally:
        codes = stop(router), stop(worker)
    assert codes == (0, 0)
    assert_each_once(durable, 30)
    for log in ("router.log", "worker.log"):
        assert "Traceback" not in (durable.workdir / log).read_text()


def test_a_relay_gone_for_a_while_gets_every_forward_once_it_is_back(product: Product) -> None:
    with running(product, "worker", log="worker.log"):
        port = product.smtp.port
        product.smtp.stop()
        stream(product, 0, 5)
        product.cli("run", "--exit-when-idle")
        product.smtp.start(port=port)
        # Retried after 5 s, then 15 s: well within the wait.
        product.smtp.wait_for(5, timeout=60)
    assert_each_once(product, 5)
    assert "unreachable" in (product.workdir / "worker.log").read_text()


def test_a_job_lost_between_pop_and_start_is_offered_again(product: Product) -> None:
    product.write("C0 <c0@c0.com>", "Stream 00")
    product.cli("run", "--exit-when-idle")
    redis = product.redis()
    # What a worker killed right after RQ's LPOP leaves: the job is in no queue.
    assert redis.lpop("rq:queue:deliver") is not None
    with running(product, "worker", log="worker.log"):  # no --name, as the Procfile runs it
        product.smtp.wait_for(1, timeout=40)
    assert_each_once(product, 1)


def test_an_unnamed_worker_killed_mid_send_loses_nothing(product: Product) -> None:
    product.smtp.hold()  # the relay takes the forward's DATA and sits on it
    worker = start(product, "worker", log="worker1.log")
    product.write("C0 <c0@c0.com>", "Stream 00")
    product.cli("run", "--exit-when-idle")
    product.smtp.wait_until_held(timeout=60)
    kill(worker)
    product.smtp.release()  # the dead worker's DATA is answered 451 and not recorded
    with running(product, "worker", log="worker2.log"):
        # Its heartbeat expires within seconds; then the entry is taken up again.
        product.smtp.wait_for(1, timeout=60)
    assert_each_once(product, 1)
    assert "taken up again" in (product.workdir / "worker2.log").read_text()


def test_a_start_with_redis_emptied_routes_only_mail_never_routed(product: Product) -> None:
    stream(product, 0, 3)
    before = product.route()
    product.redis().flushall()  # Redis lost its data set
    stream(product, 3, 2)
    after = product.route()
    # The lead hears of the loss, once: a mail of its own beside the two forwards.
    told = [r for r in after if r.rcpt_tos == ["cs-lead@acme.com"]]
    assert [str(r.message["Subject"]).split(":")[0] for r in told] == ["Redis lost its data"]
    after = [r for r in after if r not in told]
    subjects = Counter(str(r.message["Subject"]).split("] ", 1)[1] for r in before + after)
    assert subjects == Counter(f"Stream {n:02d}" for n in range(5))
    old_refs = {str(r.message["Subject"]).split("]")[0] for r in before}
    new_refs = {str(r.message["Subject"]).split("]")[0] for r in after}
    assert len(after) == 2 and not old_refs & new_refs  # no reference handed out twice
    assert "Redis has no state" in "\n".join(product.logs)


def test_check_warns_when_redis_would_lose_routing_state(
    product: Product, durable_redis: RedisServer
) -> None:
    done = product.cli("check")  # the session's Redis keeps nothing on disk
    assert "warn  redis  no persistence" in done.stdout
    product.env["ROUTER_REDIS_URL"] = durable_redis.url
    durable_redis.client().config_set("maxmemory-policy", "allkeys-lru")
    done = product.cli("check")
    assert "no persistence" not in done.stdout
    assert "maxmemory-policy allkeys-lru evicts keys" in done.stdout
    assert "ok    auth" in done.stdout  # ROUTER_TRUSTED_AUTHSERV_ID is set for the tests


def test_a_forward_refused_for_good_moves_on_and_waits_in_failed(product: Product) -> None:
    product.smtp.fail_next(550, "5.1.1 mailbox unavailable")
    product.write("C0 <c0@c0.com>", "Stream 00")
    sent = product.route()
    # Alice's mailbox refused it: Bob has the thread, with a note, and the lead is told.
    assert sorted(r.rcpt_tos[0] for r in sent) == ["bob@acme.com", "cs-lead@acme.com"]
    forward = next(r for r in sent if r.rcpt_tos == ["bob@acme.com"])
    assert "could not be delivered to alice@acme.com" in body_of(forward)
    listed = json.loads(product.cli("failed", "list", "--json").stdout)
    assert [(d["kind"], d["args"]["owner"]) for d in listed] == [("deliver", "alice@acme.com")]
    letter = listed[0]["id"]
    assert "550" in product.cli("failed", "show", letter).stdout
    product.cli("failed", "retry", letter)
    (again,) = product.route()
    assert again.rcpt_tos == ["alice@acme.com"]
    assert json.loads(product.cli("failed", "list", "--json").stdout) == []
    assert product.cli("failed", "drop", letter, check=False).returncode == 1  # gone already


def test_redis_reached_through_a_sentinel(
    product: Product, durable_redis: RedisServer, tmp_path: Path
) -> None:
    with SentinelServer(tmp_path / "sentinel", durable_redis) as sentinel:
        product.env["ROUTER_REDIS_URL"] = sentinel.url
        assert "ok    redis" in product.cli("check").stdout
        stream(product, 0, 3)
        product.route()
    assert_each_once(product, 3)
    assert durable_redis.client().get("csm:seq") == b"1003"  # the state went to the master
