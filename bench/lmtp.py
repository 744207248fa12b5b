"""LMTP ingest: from the end of the MTA's LMTP DATA to the relay's receipt of the forward.

The MTA's part is played as Postfix does it with deploy/postfix/: each message is handed
to `csm-router lmtp` and to the alias mailbox (Dovecot, by LMTP). The router watching that
mailbox (IDLE), a worker and `csm-router lmtp` run together, and the relay parses what
it gets. Every message must reach the relay exactly once: the mailbox's router meets
each copy later and must recognise it.

The baseline, in the same run: a raw LMTP pipe, an LMTP server that sends each message
on over one kept-open SMTP connection before answering 250, nothing recorded.

Usage: `python bench/lmtp.py [N]` (N messages 50 ms apart, default 200). Prints the
figures and writes `bench/results/lmtp.json`.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import re
import shutil
import smtplib
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import harness
from e2e import Product, next_user, wait_for
from harness import pct
from workloads import Parser, realistic

from csm_router.demo.relay import RecordingSmtp
from support.servers import DovecotServer, free_ports

GAP = 0.05


def raw_lmtp_pipe(port: int, relay: tuple[str, int]) -> None:
    """The baseline: LMTP in, each message sent on over one SMTP connection, then 250."""
    from aiosmtpd.lmtp import LMTP

    smtp = smtplib.SMTP(*relay)

    class Forward:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            smtp.sendmail("success@acme.com", ["alice@acme.com"], envelope.original_content)
            return "\r\n".join("250 2.0.0 OK" for _ in envelope.rcpt_tos)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: LMTP(Forward(), decode_data=False),
                                          "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def listening(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def hand_over(port: int, rcpt: str, raw: bytes) -> tuple[float, float, int]:
    """Deliver `raw` over LMTP; answers (the end of DATA, the reply's time, its code)."""
    data = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    data = re.sub(rb"(?m)^\.", b"..", data)  # dot-stuffed, as an MTA sends it
    with smtplib.LMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo_or_helo_if_needed()
        client.mail("customer@example.com")
        client.rcpt(rcpt)
        client.putcmd("data")
        code, _ = client.getreply()
        assert code == 354, code
        client.send(data + b".\r\n")
        ended = time.time()
        code, _ = client.getreply()
        return ended, time.time(), code


def spaced(dovecot: DovecotServer | None, smtp: RecordingSmtp, port: int, user: str,
           count: int, make: Callable[[int, str, str], bytes]) -> dict[str, Any]:
    """`count` new threads `GAP` apart over LMTP (and to the mailbox, if `dovecot`)."""
    smtp.clear()
    ended: dict[str, float] = {}
    replies: list[float] = []
    codes: set[int] = set()
    for n in range(count):
        raw = make(n, user, "lmtp")
        at, replied, code = hand_over(port, user, raw)
        ended[f"lmtp {n:05d}"], codes = at, codes | {code}
        replies.append(replied - at)
        if dovecot is not None:
            dovecot.deliver(user, raw)  # the MTA's other copy
        time.sleep(GAP)
    wait_for(smtp, count)
    if dovecot is not None:
        time.sleep(3)  # the mailbox's router meets every copy: none may go out again
    latency = [r.at - ended[str(r.message["Subject"]).split("] ", 1)[-1]]
               for r in smtp.messages]
    subjects = {str(r.message["Subject"]) for r in smtp.messages}
    return {"p50_ms": pct(latency, 50) * 1000, "p99_ms": pct(latency, 99) * 1000,
            "reply_p50_ms": pct(replies, 50) * 1000, "reply_p99_ms": pct(replies, 99) * 1000,
            "sent": len(smtp.messages), "distinct": len(subjects), "codes": sorted(codes)}


def run(count: int, servers: harness.Servers) -> dict[str, Any]:
    dovecot, smtp = servers.dovecot, servers.smtp
    results: dict[str, Any] = {"messages": count, "gap_ms": GAP * 1000}
    pipe_port, product_port = free_ports(2)
    pipe = multiprocessing.Process(target=raw_lmtp_pipe,
                                   args=(pipe_port, (smtp.host, smtp.port)), daemon=True)
    pipe.start()
    try:
        listening(pipe_port)
        with Parser(smtp):
            results["raw_pipe"] = spaced(None, smtp, pipe_port, next_user(), count, realistic)
    finally:
        pipe.terminate()
    product = Product(dovecot, servers.redis, smtp, servers.workdir, log_level="INFO",
                      support=True, lmtp=product_port)
    try:
        listening(product_port)
        with Parser(smtp):
            results["product"] = spaced(dovecot, smtp, product_port, product.user, count,
                                        realistic)
    finally:
        product.stop()
        shutil.copy(servers.workdir / f"{product.user}.log", harness.ROOT / "bench" / "results")
    return results


def report(r: dict[str, Any]) -> None:
    pipe, product = r["raw_pipe"], r["product"]
    print(f"\nLMTP ingest, {r['messages']} new threads {r['gap_ms']:.0f} ms apart (realistic "
          "mail): end of LMTP DATA to the relay's receipt")
    print(f"{'':<40} {'p50 ms':>8} {'p99 ms':>8} {'250 after, p50/p99 ms':>24}")
    for name, f in (("raw LMTP pipe (send, then 250)", pipe),
                    ("csm-router lmtp + run + worker", product)):
        print(f"{name:<40} {f['p50_ms']:8.1f} {f['p99_ms']:8.1f} "
              f"{f['reply_p50_ms']:12.1f} / {f['reply_p99_ms']:.1f}")
    print(f"{'goal':<40} {'<= 20':>8} {'<= 100':>8}")
    once = product["sent"] == product["distinct"] == r["messages"]
    print(f"exactly once: {product['sent']} forwards for {r['messages']} messages, each copy "
          f"also delivered to the alias mailbox ({'yes' if once else 'NO'}); LMTP replies "
          f"{product['codes']}")


def main(count: int) -> None:
    with harness.servers("lmtp") as servers:
        results = run(count, servers)
    report(results)
    harness.save("lmtp", results)


if __name__ == "__main__":
    args = harness.arguments(sys.argv[1:])
    main(int(args[0]) if args else 200)
