"""Routing and delivery throughput against the mail servers' own speed, measured in one run.

Starts a real Dovecot, redis-server and an SMTP relay on loopback, then times:

- baseline IMAP: fetching N messages from the alias with BODY.PEEK[] (the server's limit);
- router: `Router.poll_once` routing the same N messages (fetch, parse, decide, record,
  offer);
- baseline SMTP: sending N messages to the relay with aiosmtplib, one connection each;
- worker: RQ's SimpleWorker running the N delivery jobs (render, send, record).

It also counts Redis round trips per routed message and per forward, and Redis memory per
thread. Figures are reported as ratios to the baseline from the same run, because this
machine's absolute speed varies. `./scripts/bench` runs it after `bench/e2e.py`; alone:
`.venv/bin/python bench/throughput.py [N]` (default 300).
"""

from __future__ import annotations

import asyncio
import sys
import time
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import harness  # puts tests/ on the path for what follows
from redis.connection import AbstractConnection
from rq import SimpleWorker

from csm_router.app.router import Router
from csm_router.config import load_settings
from csm_router.demo.relay import RecordingSmtp
from csm_router.demo.stage import compose
from csm_router.mail.mailbox import Mailbox
from csm_router.runtime import Runtime
from csm_router.sends import jobs
from csm_router.state.outbox import QUEUES
from csm_router.state.store import key
from support.servers import DovecotServer, RedisServer

USER = "success@acme.com"


class RoundTrips:
    """Counts requests written to Redis (a pipeline or a script is one), in this process."""

    def __init__(self) -> None:
        self.count = 0
        self._original = AbstractConnection.send_packed_command

    def __enter__(self) -> RoundTrips:
        original = self._original

        def counting(conn: AbstractConnection, *args: Any, **kwargs: Any) -> None:
            self.count += 1
            original(conn, *args, **kwargs)

        AbstractConnection.send_packed_command = counting  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        AbstractConnection.send_packed_command = self._original  # type: ignore[method-assign]


def timed(label: str, work: object) -> float:
    start = time.perf_counter()
    work()  # type: ignore[operator]
    elapsed = time.perf_counter() - start
    print(f"  {label:<34} {elapsed:7.2f} s")
    return elapsed


def main(count: int) -> None:
    with harness.servers("bench") as found:
        run(count, found.dovecot, found.redis, found.smtp)


def run(
    count: int, dovecot: DovecotServer, redis_server: RedisServer, smtp: RecordingSmtp
) -> None:
    settings = load_settings(
        imap_url=dovecot.imap_url(USER), smtp_url=smtp.url, redis_url=redis_server.url,
        alias=f"Acme CS <{USER}>", pool="alice@acme.com*2, bob@acme.com, carol@acme.com",
        away="", max_open_per_csm=0,
    )
    rt = Runtime.from_settings(settings)
    jobs.configure(rt)
    for n in range(count):
        dovecot.deliver(USER, compose(f"C{n} <c{n}@customer{n % 50}.com>", f"Question {n}",
                                      "Hello,\n\nhow do I export a report?\n\nThanks\n" * 5)[1])
    print(f"{count} messages")

    client = dovecot.imap_client(USER)
    client.select_folder("INBOX", readonly=True)
    uids = client.search("ALL")
    fetch = timed("baseline: IMAP fetch", lambda: [
        client.fetch(uids[i : i + 50], ["BODY.PEEK[]"]) for i in range(0, len(uids), 50)])
    client.logout()

    memory_before = int(rt.redis.info("memory")["used_memory"])
    mailbox = Mailbox(settings.required_imap())
    mailbox.connect()
    router = Router(rt, mailbox)
    router._ensure_sequence()  # as `run` does at each connect: thread numbering starts
    with RoundTrips() as router_trips:
        route = timed("router: fetch+parse+decide+record", router.poll_once)
    mailbox.close()

    sample = EmailMessage()
    sample["From"], sample["To"], sample["Subject"] = USER, "alice@acme.com", "baseline"
    sample.set_content("Hello\n" * 40)

    async def send_all() -> None:
        for _ in range(count):
            await aiosmtplib.send(sample, hostname=smtp.host, port=smtp.port)

    send = timed("baseline: SMTP send", lambda: asyncio.run(send_all()))
    smtp.clear()
    worker = SimpleWorker([rt.queues[q] for q in QUEUES], connection=rt.redis)
    with RoundTrips() as worker_trips:
        deliver = timed("worker: render+send+record",
                        lambda: worker.work(burst=True, logging_level="WARNING"))
    assert len(smtp.messages) == count, f"expected {count} forwards, got {len(smtp.messages)}"
    print(f"router / IMAP fetch: {route / fetch:5.1f}x   ({count / route:6.0f} msg/s)")
    print(f"worker / SMTP send:  {deliver / send:5.1f}x   ({count / deliver:6.0f} msg/s)")
    print(f"Redis round trips: {router_trips.count / count:.1f} per routed message, "
          f"{worker_trips.count / count:.1f} per forward (RQ's own included)")
    # What a thread costs Redis: all of it while its raw message is kept (14 days), then
    # without the raw message. RQ's finished jobs are gone once their result expires.
    for rq_key in list(rt.redis.scan_iter("rq:*")):
        rt.redis.delete(rq_key)
    used = int(rt.redis.info("memory")["used_memory"]) - memory_before
    raw = sum(int(rt.redis.memory_usage(k) or 0) for k in rt.redis.scan_iter(key("raw", "*")))
    print(f"Redis memory per thread: {used / count / 1024:5.1f} KiB with its raw message, "
          f"{(used - raw) / count / 1024:5.1f} KiB after (raw messages expire after 14 days)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
