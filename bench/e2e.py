"""What a customer waits for: from the mail server's receipt to the CSM's inbox.

Starts a real Dovecot (mail delivered by LMTP, as an MTA does), a redis-server and a
recording SMTP relay, and the real `csm-router run` and `csm-router worker` processes.
Every figure is set beside a baseline measured in the same run:

- latency: LMTP delivery to the relay's receipt, for new threads 50 ms apart and for
  isolated ones; the floor is a minimal IDLE client's delivery-to-EXISTS time;
- throughput: a burst of new threads, router and worker together, against a minimal raw
  pipe (IDLE, fetch, re-send over one SMTP connection, no routing), with one router and
  one worker, and with two of each;
- two workloads (bench/workloads.py): the kind one above (one short line from 50
  domains, logs at WARNING), and the realistic one: trace headers, bodies of some 500
  characters with an HTML part in every third, 1,000 distinct customers, logs at INFO,
  and a relay that parses every message it gets. Each against its own raw pipe.

Usage: `./scripts/bench [N]` (N threads in the burst, default 1000). Prints a table and
writes `bench/results/e2e.json`. `python bench/e2e.py N --product-src ../old/src` measures
another checkout (say, the previous release) with the same harness.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import smtplib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness  # puts tests/ on the path for what follows
from harness import pct
from workloads import WORKLOADS, Parser, kind

from csm_router.demo.relay import RecordingSmtp
from support.servers import DovecotServer, RedisServer

POOL = "alice@acme.com*2, bob@acme.com, carol@acme.com"
_users = iter(f"success-{n}@acme.com" for n in range(1, 1000))


def next_user() -> str:
    """A mailbox no run has used yet."""
    return next(_users)


mail = kind  # the kind workload's mail unless a run says otherwise


def idle_floor(dovecot: DovecotServer, samples: int = 30) -> list[float]:
    """Delivery to the server's EXISTS push, for a client doing nothing but IDLE."""
    user = next(_users)
    client = dovecot.imap_client(user)
    client.select_folder("INBOX")
    found = []
    for n in range(samples):
        client.idle()
        dovecot.deliver(user, mail(n, user, "floor"))
        delivered = time.time()
        while True:
            responses = client.idle_check(timeout=10)
            if any(r[1] == b"EXISTS" for r in responses if len(r) > 1):
                found.append(time.time() - delivered)
                break
        client.idle_done()
    client.logout()
    return found


def raw_pipe(imap_url: tuple[str, int, str, str], relay: tuple[str, int],
             stop_after: int) -> None:
    """The baseline: IDLE, fetch what is new, send each message on over one connection."""
    from imapclient import IMAPClient

    host, port, user, password = imap_url
    client = IMAPClient(host, port=port, ssl=False, timeout=30)
    client.login(user, password)
    client.select_folder("INBOX")
    smtp = smtplib.SMTP(*relay)
    last, sent = 0, 0
    while sent < stop_after:
        uids = [u for u in client.search(["UID", f"{last + 1}:*"]) if u > last]
        for start in range(0, len(uids), 50):
            batch = uids[start : start + 50]
            for uid, item in client.fetch(batch, [b"BODY.PEEK[]"]).items():
                smtp.sendmail("success@acme.com", ["alice@acme.com"], item[b"BODY[]"])
                sent += 1
                last = max(last, uid)
        if sent < stop_after:
            client.idle()
            client.idle_check(timeout=1)
            client.idle_done()
    smtp.quit()
    client.logout()


class Product:
    """`csm-router run` and `csm-router worker` processes on one mailbox."""

    def __init__(self, dovecot: DovecotServer, redis: RedisServer, smtp: RecordingSmtp,
                 workdir: Path, routers: int = 1, workers: int = 1, *, user: str = "",
                 settle: float = 3, flush: bool = True, log_level: str = "WARNING",
                 support: bool = False, lmtp: int | None = None) -> None:
        self.user = user or next(_users)
        if flush:
            with redis.client() as client:
                client.flushall()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
        env.update(ROUTER_IMAP_URL=dovecot.imap_url(self.user), ROUTER_SMTP_URL=smtp.url,
                   ROUTER_REDIS_URL=redis.url, ROUTER_ALIAS=f"Acme CS <{self.user}>",
                   ROUTER_POOL=POOL, ROUTER_POLL_SECONDS="30", ROUTER_LOG_LEVEL=log_level)
        if support:  # as a real deployment runs: every customer message is classified
            env["ROUTER_SUPPORT_ADDRESS"] = "support@acme.com"
        if lmtp is not None:
            env["ROUTER_LMTP_ADDRESS"] = f"127.0.0.1:{lmtp}"
        log = open(workdir / f"{self.user}.log", "ab")  # noqa: SIM115  # closed in stop()
        self.log = log
        cmd = [sys.executable, "-m", "csm_router.cli"]
        env = harness.product_env(env)
        self.procs = [subprocess.Popen([*cmd, "worker"], env=env, stdout=log, stderr=log)
                      for _ in range(workers)]
        self.procs += [subprocess.Popen([*cmd, "run"], env=env, stdout=log, stderr=log)
                       for _ in range(routers)]
        if lmtp is not None:
            self.procs.append(subprocess.Popen([*cmd, "lmtp"], env=env, stdout=log, stderr=log))
        time.sleep(settle)  # imports, IMAP login and the first (empty) pass

    def rss_mb(self) -> list[float]:
        """Resident memory of each process (workers first), in MB."""
        found = []
        for proc in self.procs:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            kb = next(int(line.split()[1]) for line in status.splitlines()
                      if line.startswith("VmRSS:"))
            found.append(kb / 1024)
        return found

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            proc.wait(30)
        self.log.close()


def wait_for(smtp: RecordingSmtp, count: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while len(smtp.messages) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(smtp.messages)} of {count} arrived")
        time.sleep(0.01)


def latencies(dovecot: DovecotServer, smtp: RecordingSmtp, product: Product, count: int,
              gap: float | None, make: Callable[[int, str, str], bytes] = kind) -> list[float]:
    """Deliver `count` new threads `gap` seconds apart (None: each after the last arrived)."""
    smtp.clear()
    delivered: dict[str, float] = {}
    for n in range(count):
        dovecot.deliver(product.user, make(n, product.user, "latency"))
        delivered[f"latency {n:05d}"] = time.time()
        if gap is None:
            wait_for(smtp, n + 1)
        else:
            time.sleep(gap)
    wait_for(smtp, count)
    return [r.at - delivered[str(r.message["Subject"]).split("] ", 1)[1]]
            for r in smtp.messages]


def burst(dovecot: DovecotServer, smtp: RecordingSmtp, user: str, count: int,
          consumer: Callable[[], Any], tag: str = "burst",
          make: Callable[[int, str, str], bytes] = kind) -> float:
    """Messages per second from the first delivery to the last receipt at the relay."""
    smtp.clear()
    raws = [make(n, user, tag) for n in range(count)]
    started = time.time()
    handle = consumer()
    for raw in raws:
        dovecot.deliver(user, raw)
    wait_for(smtp, count)
    elapsed = max(r.at for r in smtp.messages) - started
    if isinstance(handle, multiprocessing.Process):
        handle.join(30)
    return count / elapsed


def main(count: int) -> None:
    with harness.servers("e2e") as found:
        results = run(count, found.dovecot, found.redis, found.smtp, found.workdir)
    harness.save("e2e", results)


def run(count: int, dovecot: DovecotServer, redis: RedisServer, smtp: RecordingSmtp,
        workdir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"burst_threads": count}
    floor = idle_floor(dovecot)
    results["idle_floor_ms"] = {"p50": pct(floor, 50) * 1000, "p99": pct(floor, 99) * 1000}

    product = Product(dovecot, redis, smtp, workdir)
    try:
        spaced = latencies(dovecot, smtp, product, 200, 0.05)
        isolated = latencies(dovecot, smtp, product, 50, None)
    finally:
        product.stop()
    for name, values in (("spaced_50ms", spaced), ("isolated", isolated)):
        results[f"latency_{name}_ms"] = {
            "p50": pct(values, 50) * 1000, "p99": pct(values, 99) * 1000,
            "mean": statistics.fmean(values) * 1000}

    pipe_user = next(_users)
    results["raw_pipe_per_s"] = burst(dovecot, smtp, pipe_user, count,
                                      pipe_starter(dovecot, smtp, pipe_user, count))
    for routers, workers in ((1, 1), (2, 2)):
        product = Product(dovecot, redis, smtp, workdir, routers, workers)
        try:
            rate = burst(dovecot, smtp, product.user, count, lambda: None)
            if routers == 1:
                # Memory after `count` messages, and after ten times as many.
                before = product.rss_mb()
                burst(dovecot, smtp, product.user, 9 * count, lambda: None, tag="more")
                after = product.rss_mb()
                results["rss_mb"] = {"after": [count, 10 * count], "router": [before[1], after[1]],
                                     "worker": [before[0], after[0]]}
        finally:
            product.stop()
        results[f"product_{routers}r{workers}w_per_s"] = rate
    small, big = startup(dovecot, redis, smtp, workdir, 1_000), \
        startup(dovecot, redis, smtp, workdir, 100_000)
    results["startup_s"] = {"1000": small, "100000": big}
    results["realistic"] = realistic_run(count, dovecot, redis, smtp, workdir)
    report(results)
    return results


def pipe_starter(dovecot: DovecotServer, smtp: RecordingSmtp, user: str,
                 count: int) -> Callable[[], multiprocessing.Process]:
    """What starts the raw pipe for a burst of `count` to `user`."""
    def start() -> multiprocessing.Process:
        proc = multiprocessing.Process(target=raw_pipe, args=(
            (dovecot.host, dovecot.imap_port, user, dovecot.password),
            (smtp.host, smtp.port), count))
        proc.start()
        time.sleep(1)  # logged in and idling
        return proc
    return start


def realistic_run(count: int, dovecot: DovecotServer, redis: RedisServer, smtp: RecordingSmtp,
                  workdir: Path) -> dict[str, Any]:
    """The realistic workload (workloads.realistic), logs at INFO, Support configured (so
    the classifier reads every message), a relay that parses every message: its raw pipe,
    one router and one worker, and the spaced latencies."""
    make = WORKLOADS["realistic"]
    results: dict[str, Any] = {}
    pipe_user = next(_users)
    with Parser(smtp):
        results["raw_pipe_per_s"] = burst(dovecot, smtp, pipe_user, count,
                                          pipe_starter(dovecot, smtp, pipe_user, count),
                                          make=make)
    product = Product(dovecot, redis, smtp, workdir, log_level="INFO", support=True)
    try:
        with Parser(smtp):
            results["product_1r1w_per_s"] = burst(dovecot, smtp, product.user, count,
                                                  lambda: None, make=make)
        with Parser(smtp):
            spaced = latencies(dovecot, smtp, product, 200, 0.05, make)
    finally:
        product.stop()
    results["latency_spaced_50ms_ms"] = {"p50": pct(spaced, 50) * 1000,
                                         "p99": pct(spaced, 99) * 1000}
    return results


def startup(dovecot: DovecotServer, redis: RedisServer, smtp: RecordingSmtp, workdir: Path,
            routed: int) -> tuple[float, float, float]:
    """Seconds from starting a router and a worker on a mailbox holding `routed` messages
    already routed, to a new message's forward at the relay; and for a bare IMAP client to
    fetch a new message from the same mailbox, already running and started as a process
    (as the router is: an interpreter and its imports).

    The old messages are written straight into the maildir (an MTA would take many minutes
    to deliver 100,000) and indexed by one SELECT before the clock starts; the router's
    checkpoint says they were routed, as it would after routing them.
    """
    user = next(_users)
    dovecot.deliver(user, mail(0, user, "old"))  # Dovecot makes the maildir
    cur = dovecot.root / "mail" / user / "cur"
    template = mail(0, user, "old")
    for n in range(1, routed):
        path = cur / f"{1_700_000_000 + n}.M{n}P1.bench:2,S"
        path.write_bytes(template.replace(b"old 00000", f"old {n:05d}".encode()))
        shutil.chown(path, "dovecot", "dovecot")
    client = dovecot.imap_client(user)
    selected = client.select_folder("INBOX")
    client.logout()
    with redis.client() as r:
        r.flushall()
        r.set("csm:seq", 1000 + routed)
        r.hset(f"csm:mailbox:{user}@{dovecot.host}:{dovecot.imap_port}/INBOX", mapping={
            "uidvalidity": selected[b"UIDVALIDITY"], "last_uid": selected[b"UIDNEXT"] - 1})
    smtp.clear()
    dovecot.deliver(user, mail(1, user, "new"))
    started = time.time()
    product = Product(dovecot, redis, smtp, workdir, user=user, settle=0, flush=False)
    try:
        wait_for(smtp, 1, timeout=300)
    finally:
        product.stop()
    took = smtp.messages[0].at - started
    # The same wait for a bare client: log in, SELECT, fetch the new message. Dovecot's
    # SELECT of a big maildir (a scan of its directory) is part of any client's start.
    dovecot.deliver(user, mail(2, user, "new"))
    started = time.time()
    client = dovecot.imap_client(user)
    client.select_folder("INBOX")
    client.fetch(client.search(["UID", f"{selected[b'UIDNEXT'] + 1}:*"]), [b"BODY.PEEK[]"])
    client.logout()
    bare = time.time() - started
    dovecot.deliver(user, mail(3, user, "new"))
    started = time.time()
    subprocess.run([sys.executable, "-c", BARE_CLIENT, dovecot.host, str(dovecot.imap_port),
                    user, dovecot.password, str(selected[b"UIDNEXT"] + 2)], check=True)
    return took, bare, time.time() - started


BARE_CLIENT = """\
import sys
from imapclient import IMAPClient
host, port, user, password, uid = sys.argv[1:]
client = IMAPClient(host, port=int(port), ssl=False, timeout=30)
client.login(user, password)
client.select_folder("INBOX")
client.fetch(client.search(["UID", f"{uid}:*"]), [b"BODY.PEEK[]"])
client.logout()
"""


def report(r: dict[str, Any]) -> None:
    rss = r["rss_mb"]
    small, big = rss["after"]
    for name in ("router", "worker"):
        first, last = rss[name]
        print(f"{name} RSS after {small} / {big} messages: {first:.0f} / {last:.0f} MB "
              f"(growth {last - first:+.1f} MB; goal < 20 MB)")
    (small_s, small_raw, small_proc), (big_s, big_raw, big_proc) = (
        r["startup_s"]["1000"], r["startup_s"]["100000"])
    print(f"start-up to the first forward, 1,000 / 100,000 messages routed before: "
          f"{small_s:.2f} / {big_s:.2f} s; a bare IMAP client's login, SELECT and fetch: "
          f"{small_raw:.2f} / {big_raw:.2f} s running, {small_proc:.2f} / {big_proc:.2f} s "
          f"started as a process; over that: {small_s - small_proc:+.2f} / "
          f"{big_s - big_proc:+.2f} s (goal <= +0.3 s)")
    floor = r["idle_floor_ms"]
    print(f"IDLE floor (delivery to EXISTS): p50 {floor['p50']:.0f} ms, p99 {floor['p99']:.0f} ms")
    print(f"{'figure':<44} {'csm-router':>12} {'goal':>22}")
    spaced, isolated = r["latency_spaced_50ms_ms"], r["latency_isolated_ms"]
    goal = f"p50 <= {floor['p50'] + 50:.0f}, p99 < 1000"
    print(f"{'200 new threads 50 ms apart, p50 / p99 ms':<44} "
          f"{spaced['p50']:5.0f} / {spaced['p99']:4.0f} {goal:>22}")
    print(f"{'50 isolated new threads, p50 / p99 ms':<44} "
          f"{isolated['p50']:5.0f} / {isolated['p99']:4.0f} {goal:>22}")
    pipe = r["raw_pipe_per_s"]
    for key, label in (("product_1r1w_per_s", "1 router, 1 worker"),
                       ("product_2r2w_per_s", "2 routers, 2 workers")):
        rate, figure = r[key], f"burst of {r['burst_threads']}, {label}, msg/s"
        goal = f">= 0.8x of {pipe:.1f}/s"
        print(f"{figure:<44} {rate:6.1f} ({rate / pipe:4.2f}x) {goal:>17}")
    real = r["realistic"]
    print(f"\n{'the two workloads side by side':<44} {'kind':>14} {'realistic':>14}")
    for name, k, q in (
            ("raw pipe, msg/s", pipe, real["raw_pipe_per_s"]),
            ("1 router, 1 worker, msg/s", r["product_1r1w_per_s"], real["product_1r1w_per_s"])):
        print(f"{name:<44} {k:14.1f} {q:14.1f}")
    ratios = (r["product_1r1w_per_s"] / pipe,
              real["product_1r1w_per_s"] / real["raw_pipe_per_s"])
    print(f"{'ratio to its own raw pipe (goal >= 0.8x)':<44} {ratios[0]:13.2f}x {ratios[1]:13.2f}x")
    kind_spaced, real_spaced = r["latency_spaced_50ms_ms"], real["latency_spaced_50ms_ms"]
    print(f"{'200 new threads 50 ms apart, p50 / p99 ms':<44} "
          f"{kind_spaced['p50']:6.0f} / {kind_spaced['p99']:4.0f} "
          f"{real_spaced['p50']:6.0f} / {real_spaced['p99']:4.0f}")


if __name__ == "__main__":
    args = harness.arguments(sys.argv[1:])
    main(int(args[0]) if args else 1000)
