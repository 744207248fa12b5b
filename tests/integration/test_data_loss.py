"""Redis losing its data under running processes: noticed at once, numbering goes on above
every reference handed out, nothing routed twice, the lead told once."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter

import pytest
from test_processes import start, stop

from csm_router.demo.relay import Received
from support.product import Product
from support.servers import wait_until

pytestmark = pytest.mark.integration

LEAD = "cs-lead@acme.com"
SUBJECT = re.compile(r"^\[CS-(\d+)\] (Question \d+)$")


def forwards(product: Product) -> list[tuple[int, str]]:
    """(reference, customer's subject) of each forward the relay took, in order."""
    found = []
    for received in product.smtp.messages:
        match = SUBJECT.match(str(received.message["Subject"]))
        if match and LEAD not in received.rcpt_tos:
            found.append((int(match[1]), match[2]))
    return found


def lead_notices(product: Product) -> list[Received]:
    return [r for r in product.smtp.messages
            if LEAD in r.rcpt_tos and "lost its data" in str(r.message["Subject"])]


def test_redis_emptied_under_a_stream_of_mail_goes_on_numbering_and_tells_the_lead_once(
    product: Product,
) -> None:
    recorder = product.smtp._recorder  # its condition is the event to await

    def wait(ready: object, what: str, timeout: float = 60.0) -> None:
        with recorder.changed:
            if not recorder.changed.wait_for(ready, timeout):  # type: ignore[arg-type]
                raise AssertionError(f"timed out waiting for {what}: {forwards(product)}")

    router = start(product, "run", log="router.log")
    worker = start(product, "worker", "--name", "w1", log="worker.log")
    try:
        for n in range(3):
            product.write(f"C{n} <c{n}@c{n}.com>", f"Question {n}")
        wait(lambda: len(forwards(product)) == 3, "the first three forwards")
        before = max(ref for ref, _ in forwards(product))

        # More mail keeps coming while Redis is emptied (a restart without persistence).
        second_written = threading.Event()

        def stream() -> None:
            for n in range(3, 9):
                product.write(f"C{n} <c{n}@c{n}.com>", f"Question {n}")
                if n == 4:
                    second_written.set()
                time.sleep(0.2)  # a trickle of mail, not a synchronisation

        writer = threading.Thread(target=stream)
        writer.start()
        assert second_written.wait(30)
        with product.redis() as client:
            client.flushall()
        writer.join(30)
        wait(lambda: len(lead_notices(product)) >= 1, "the lead to hear of the loss")

        # Routing goes on for the next customer, numbered above everything before.
        product.write("Next <next@next.com>", "Question 99")
        wait(lambda: any(s == "Question 99" for _, s in forwards(product)), "the next forward")
        got = forwards(product)
        twice = [s for s, n in Counter(s for _, s in got).items() if n > 1]
        assert twice == []  # nothing routed twice
        refs = [ref for ref, _ in got]
        assert len(set(refs)) == len(refs)  # no reference handed out twice
        after = next(ref for ref, s in got if s == "Question 99")
        assert after > before
        # Every message after the loss was noticed is routed (the ones in flight at the
        # instant of the loss may have had their forward owed in what was lost).
        assert {s for _, s in got} >= {f"Question {n}" for n in (0, 1, 2, 99)}
        assert router.poll() is None and worker.poll() is None  # every process alive
        notices = lead_notices(product)
        assert len(notices) == 1
        body = notices[0].message.get_body(("plain",))
        assert body is not None and "above every reference" in body.get_content()
        # Each process noticed by itself, not only the one that numbered again.
        # The worker looks once a second: under load, its line may follow the others.
        worker_log = product.workdir / "worker.log"
        wait_until(lambda: "worker: Redis lost its data" in worker_log.read_text(),
                   "the worker to notice the loss itself")
        assert "INBOX: Redis lost its data" in (product.workdir / "router.log").read_text()
    finally:
        assert [stop(router), stop(worker)] == [0, 0]
    assert len(lead_notices(product)) == 1
