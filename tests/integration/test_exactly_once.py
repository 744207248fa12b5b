"""Exactly once, on real servers: job timeouts, worker names, plain RQ workers, a relay
down for longer than the retries. Each ends with the next customer routed as usual."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib
from test_faults import running
from test_processes import kill, start

from csm_router.demo.relay import Received
from support.product import ALICE, BOB, CAROL, Product
from support.servers import RedisServer, master_and_replica, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, to pause without disturbing the session's."""
    with RedisServer(tmp_path / "redis") as server:
        yield server


def subjects(product: Product) -> Counter[str]:
    return Counter(str(r.message["Subject"]).split("] ", 1)[-1] for r in product.smtp.messages)


def log_of(product: Product, name: str) -> str:
    return (product.workdir / name).read_text()


def next_customer_is_routed(product: Product, subject: str = "Next customer") -> None:
    """Routing goes on: a new customer's mail reaches a CSM, once."""
    product.write("Max Muster <max@initech.com>", subject)
    product.cli("run", "--exit-when-idle")
    wait_until(lambda: subjects(product)[subject] == 1, f"{subject!r} forwarded", timeout=60)


def entry_state(redis: redis_lib.Redis, prefix: str) -> dict[str, str]:
    """The outbox entries whose id starts with `prefix`, and their state."""
    found = {}
    for k in redis.scan_iter(f"csm:outbox:e:{prefix}*"):
        found[k.decode().rsplit(":", 1)[1]] = (redis.hget(k, "state") or b"").decode()
    return found


def test_a_job_that_times_out_after_its_send_does_not_send_again(
    product: Product, own_redis: RedisServer
) -> None:
    product.env["ROUTER_REDIS_URL"] = own_redis.url
    redis = product.redis()
    product.write("Jane Doe <jane@globex.com>", "Timed out after the send")
    product.cli("run", "--exit-when-idle")  # owed and offered: one job in the queue
    (job_id,) = redis.lrange("rq:queue:deliver", 0, -1)
    redis.hset(f"rq:job:{job_id.decode()}", "timeout", 3)  # its time runs out after the send
    product.smtp.hold(accept=True)
    with running(product, "worker", "--name", "w1", log="worker.log"):
        product.smtp.wait_until_held(timeout=60)
        with own_redis.paused():  # the record of the send cannot be written just now
            product.smtp.release()  # the relay says 250
            wait_until(lambda: "time ran out after a send" in log_of(product, "worker.log"),
                       "the job's timeout to strike after the send", timeout=30)
        wait_until(lambda: set(entry_state(redis, "deliver-").values()) == {"done"},
                   "the forward recorded as done", timeout=60)
        next_customer_is_routed(product)
    assert subjects(product)["Timed out after the send"] == 1


def test_a_second_worker_with_a_live_workers_name_is_refused(product: Product) -> None:
    redis = product.redis()
    first = start(product, "worker", "--name", "w1", log="w1.log")
    try:
        wait_until(lambda: redis.exists("csm:worker:w1"), "w1 beating", timeout=30)
        twin = product.cli("worker", "--name", "w1", check=False)
        assert twin.returncode == 2
        refusals = [line for line in twin.stderr.splitlines() if "w1" in line]
        assert len(refusals) == 1 and "running already" in refusals[0]
        assert first.poll() is None  # the live one goes on
    finally:
        kill(first)  # kill -9: its beat is left behind, no longer advancing
    with running(product, "worker", "--name", "w1", log="w1-again.log"):
        next_customer_is_routed(product)
    assert "running already" not in log_of(product, "w1-again.log")


def test_a_plain_rq_worker_does_not_send(product: Product) -> None:
    product.write("Jane Doe <jane@globex.com>", "Not for a plain RQ worker")
    product.cli("run", "--exit-when-idle")
    plain = subprocess.run(
        [sys.executable, "-c", "from rq.cli import main; main()", "worker", "--burst",
         "--url", product.env["ROUTER_REDIS_URL"], "deliver", "support"],
        env=product.env, cwd=product.workdir, capture_output=True, text=True, timeout=120)
    assert "plain `rq worker`" in plain.stdout + plain.stderr
    assert product.smtp.messages == []
    with running(product, "worker", log="worker.log"):  # offered again to a real worker
        wait_until(lambda: subjects(product)["Not for a plain RQ worker"] == 1,
                   "the forward sent by csm-router worker", timeout=60)
        next_customer_is_routed(product)
    assert subjects(product)["Not for a plain RQ worker"] == 1


def test_a_relay_down_past_the_retries_still_owes_the_thread_when_it_comes_back(
    product: Product,
) -> None:
    product.env["ROUTER_RETRY_DELAYS"] = "0.2"  # two attempts, then a dead letter
    redis = product.redis()
    port = product.smtp.port
    product.smtp.stop()
    product.write("Jane Doe <jane@globex.com>", "Relay down for hours")
    product.cli("run", "--exit-when-idle")
    with running(product, "worker", log="worker.log"):
        # Each forward dies, the thread moves on, and comes back to a CSM whose forward
        # died before: that forward is owed again, as a new generation.
        wait_until(lambda: any(i.endswith("-g2") for i in entry_state(redis, "deliver-")),
                   "a forward owed again after its dead letter", timeout=120)
        product.smtp.start(port=port)
        wait_until(lambda: forwards(product), "the thread's forward once the relay is back",
                   timeout=60)
        next_customer_is_routed(product)
    owner = redis.hget("csm:thread:1001", "owner")
    assert owner is not None
    (forward,) = forwards(product)
    assert forward.rcpt_tos == [owner.decode()]  # the CSM who has the thread got it


def forwards(product: Product, ref: str = "[CS-1001]") -> list[Received]:
    return [r for r in product.smtp.messages if str(r.message["Subject"]).startswith(ref)
            and r.rcpt_tos[0] in (ALICE, BOB, CAROL)]


def test_a_replica_lagging_before_a_send_is_a_wait_not_a_failed_attempt(
    product: Product, tmp_path: Path
) -> None:
    with master_and_replica(tmp_path) as (master, replica):
        product.env["ROUTER_REDIS_URL"] = master.url
        product.env["ROUTER_RETRY_DELAYS"] = "0.2"  # two counted attempts would dead-letter it
        redis = product.redis()
        with running(product, "worker", log="worker.log"):
            with replica.paused():  # WAIT gets no replica's answer
                product.write("Jane Doe <jane@globex.com>", "Replica lagging")
                product.cli("run", "--exit-when-idle")
                wait_until(lambda: log_of(product, "worker.log").count(
                    "no replica confirmed this entry yet: waiting") >= 3,
                    "three waits for the replica", timeout=90)
                (entry,) = entry_state(redis, "deliver-")
                assert redis.hget(f"csm:outbox:e:{entry}", "attempts") == b"0"
                assert redis.zcard("csm:dead") == 0 and product.smtp.messages == []
                owner = redis.hget("csm:thread:1001", "owner")
            wait_until(lambda: subjects(product)["Replica lagging"] == 1,
                       "the forward once the replica answers", timeout=60)
            assert redis.hget("csm:thread:1001", "owner") == owner  # never moved
            next_customer_is_routed(product)
