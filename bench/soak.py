"""A month of a pooled inbox in minutes, under faults: is it still right at the end?

Starts a real Dovecot (mail delivered by LMTP), a redis-server that persists every write
and a recording SMTP relay, then the real `csm-router run` and two `csm-router worker`
processes. Time is compressed: one working day lasts `--day` seconds (default 20, so the
default 30 days take ten minutes), and every duration the product reads is scaled to it
(first-response target, ROUTER_CLOSE_AFTER, retention). During the month:

- customers of a few hundred accounts (a fifth at public mail providers) open threads;
- the CSM who got the forward answers most threads in time, some late, a few never;
- customers write again, some soon (the thread is still open), some after a quiet spell
  longer than ROUTER_CLOSE_AFTER (the thread closed by itself and reopens);
- every few minutes the chaos run's faults strike: workers and the router killed with
  SIGKILL, Redis stopped and killed, the relay away.

At the end, with every CSM available and the mail drained, it checks that every customer
message was forwarded (nothing lost), that no forward went out twice, that no thread is
left held, that open threads stayed bounded, and that Redis memory was flat after the
warm-up; it plots memory and open threads over the month to `bench/results/soak.png`.

Usage: `./scripts/soak [--days 30] [--day 20]`.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness  # puts tests/ on the path for what follows
import redis as redis_lib
from chaos import Fleet

from csm_router.demo.relay import RecordingSmtp
from csm_router.demo.stage import compose
from support.product import GENUINE
from support.servers import DovecotServer, RedisServer

USER = "success@acme.com"
CSMS = ("alice@acme.com", "bob@acme.com", "carol@acme.com", "dan@acme.com", "erin@acme.com")
MAX_OPEN = 40
FREE_MAIL = ("gmail.com", "yahoo.co.jp", "t-online.de", "rediffmail.com", "qq.com")


@dataclass
class Month:
    """What was sent and seen, shared by the threads that drive the month."""

    customers: list[str] = field(default_factory=list)  # Message-IDs the customers wrote
    answered: set[str] = field(default_factory=set)  # forward Message-IDs a CSM answered
    samples: list[dict[str, float]] = field(default_factory=list)
    faults: list[tuple[float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _sender(rng: random.Random, n: int) -> str:
    account = rng.randrange(300)
    if account % 5 == 0:  # public mail providers: each address is a customer of its own
        domain = FREE_MAIL[account % len(FREE_MAIL)]
        return f"Customer {n} <person{account}.{n % 7}@{domain}>"
    return f"Customer {n} <user{n % 9}@account{account}.example>"


def customers(dovecot: DovecotServer, month: Month, stop: threading.Event, day: float,
              began: float, rng: random.Random) -> None:
    """New threads through the working day, with a quiet spell every evening."""
    n = 0
    while not stop.is_set():
        at = (time.monotonic() - began) % day / day
        if at < 0.7:  # working hours; the rest of the day is quiet
            message_id, raw = compose(_sender(rng, n), f"Question {n:05d} about our plan",
                                      "Hello,\n\nhow do we add seats?\n\nThanks\n", to=USER)
            dovecot.deliver(USER, raw)
            with month.lock:
                month.customers.append(message_id)
            n += 1
        stop.wait(rng.uniform(0.4, 1.0))


def csms_and_replies(dovecot: DovecotServer, smtp: RecordingSmtp, month: Month,
                     stop: threading.Event, day: float, close_after: float,
                     rng: random.Random) -> None:
    """CSMs answer what they were sent; customers write again, soon or after a quiet spell."""
    seen = 0
    later: list[tuple[float, Any]] = []
    while not stop.is_set():
        messages = smtp.messages
        for received in messages[seen:]:
            message = received.message
            rcpt = received.rcpt_tos[0]
            subject = str(message["Subject"] or "")
            if rcpt not in CSMS or "[CS-" not in subject or "Reminder" in subject:
                continue
            fate = rng.random()
            if fate < 0.05:
                continue  # never answered: escalated, then someone else answers
            delay = rng.uniform(0.02, 0.3) * day if fate < 0.9 else rng.uniform(0.5, 1.0) * day
            later.append((time.monotonic() + delay, ("answer", rcpt, message)))
        seen = len(messages)
        now = time.monotonic()
        due, later = [x for x in later if x[0] <= now], [x for x in later if x[0] > now]
        for _, (kind, who, message) in due:
            subject = str(message["Subject"])
            customer = str(message["Reply-To"]).split(",")[0]
            if kind == "answer":
                _, raw = compose(who, f"Re: {subject}", "Hello,\n\nhere is how.\n",
                                 to=customer, cc=USER, in_reply_to=str(message["In-Reply-To"]),
                                 headers=GENUINE)
                dovecot.deliver(USER, raw)
                month.answered.add(str(message["Message-ID"]))
                fate = rng.random()
                if fate < 0.5:  # the customer writes again: soon, or after the thread closed
                    wait = rng.uniform(0.1, 0.5) * day if fate < 0.3 else close_after * 1.5
                    later.append((time.monotonic() + wait, ("again", customer, message)))
            else:
                message_id, raw = compose(who, subject.removeprefix("Re: "),
                                          "One more question.\n", to=USER,
                                          in_reply_to=str(message["In-Reply-To"]))
                dovecot.deliver(USER, raw)
                with month.lock:
                    month.customers.append(message_id)
        stop.wait(0.5)


def sample(client: redis_lib.Redis, month: Month, began: float) -> None:
    try:
        memory = float(client.info("memory")["used_memory"])
        open_sets = [k for k in client.scan_iter("csm:open:*", count=1000)]
        opened = sum(int(client.scard(k)) for k in open_sets)
        held, keys = int(client.zcard("csm:held")), int(client.dbsize())
    except redis_lib.RedisError:
        return  # Redis is down for a fault just now
    month.samples.append({"t": time.monotonic() - began, "memory": memory,
                          "open": opened, "held": held, "keys": keys})


def faults(fleet: Fleet, redis_server: RedisServer, smtp: RecordingSmtp, month: Month,
           stop: threading.Event, every: float, began: float) -> None:
    """The chaos run's faults, one at a time, round and round."""
    def relay_away() -> None:
        port = smtp.port
        smtp.stop()
        stop.wait(8)
        smtp.start(port=port)

    plan = [
        ("worker-a SIGKILL", lambda: (fleet.kill("worker-a"),
                                      fleet.start("worker-a", "worker", "--name", "host-a"))),
        ("Redis restarted", lambda: redis_server.restart(3)),
        ("router SIGKILL", lambda: (fleet.kill("router"), fleet.start("router", "run"))),
        ("worker-b SIGKILL", lambda: (fleet.kill("worker-b"),
                                      fleet.start("worker-b", "worker", "--name", "host-b"))),
        ("Redis SIGKILL", lambda: redis_server.restart(2, kill=True)),
        ("relay away 8 s", relay_away),
    ]
    step = 0
    while not stop.wait(every):
        what, action = plan[step % len(plan)]
        month.faults.append((time.monotonic() - began, what))
        action()
        step += 1


def plot(month: Month, path: Path, warm: float) -> None:
    """Redis memory and open threads over the month, faults as ticks, warm-up shaded."""
    from PIL import Image, ImageDraw

    width, height, pad = 900, 420, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    end = max(s["t"] for s in month.samples) or 1.0
    top_mem = max(s["memory"] for s in month.samples) * 1.1
    top_open = max(max(s["open"] for s in month.samples), len(CSMS) * MAX_OPEN) * 1.1

    def xy(t: float, value: float, top: float) -> tuple[float, float]:
        return (pad + (width - 2 * pad) * t / end,
                height - pad - (height - 2 * pad) * value / top)

    draw.rectangle([pad, pad, xy(min(warm, end), 0, 1)[0], height - pad], fill=(238, 238, 238))
    draw.rectangle([pad, pad, width - pad, height - pad], outline="black")
    for t, _ in month.faults:
        x = xy(t, 0, 1)[0]
        draw.line([x, height - pad, x, height - pad + 8], fill="red")
    draw.line([xy(s["t"], s["memory"], top_mem) for s in month.samples], fill="blue", width=2)
    draw.line([xy(s["t"], s["open"], top_open) for s in month.samples], fill="green", width=2)
    cap = xy(0, len(CSMS) * MAX_OPEN, top_open)[1]
    draw.line([pad, cap, width - pad, cap], fill=(0, 140, 0))
    draw.text((pad, 10), f"Redis used_memory (blue, max {top_mem / 1.1 / 1e6:.1f} MB), open "
              f"threads (green; line = capacity {len(CSMS) * MAX_OPEN}); red ticks: faults; "
              "grey: warm-up", fill="black")
    draw.text((pad, height - pad + 12), "0 s", fill="black")
    draw.text((width - pad - 40, height - pad + 12), f"{end:.0f} s", fill="black")
    image.save(path)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--day", type=float, default=20.0, help="seconds per day")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(harness.arguments(argv))
    with harness.servers("soak", persistent=True) as found:
        return run(args.days, args.day, args.seed, found.dovecot, found.redis, found.smtp,
                   found.workdir)


def run(days: int, day: float, seed: int, dovecot: DovecotServer, redis_server: RedisServer,
        smtp: RecordingSmtp, workdir: Path) -> int:
    close_after = 3 * day  # "3d" in the compressed month
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    env.update(
        ROUTER_IMAP_URL=dovecot.imap_url(USER), ROUTER_SMTP_URL=smtp.url,
        ROUTER_REDIS_URL=redis_server.url, ROUTER_ALIAS=f"Acme CS <{USER}>",
        ROUTER_POOL=", ".join(CSMS), ROUTER_POLL_SECONDS="1",
        ROUTER_TRUSTED_AUTHSERV_ID="mx.acme.test", ROUTER_OVERFLOW_ADDRESS="cs-lead@acme.com",
        ROUTER_MAX_OPEN_PER_CSM=str(MAX_OPEN), ROUTER_FIRST_RESPONSE_MINUTES="1",
        ROUTER_CLOSE_AFTER=f"{close_after:.0f}s",
        # Seven compressed days: long past any reply, short enough to see memory level off.
        ROUTER_RETENTION_DAYS=f"{7 * day / 86400:.8f}",
    )
    fleet = Fleet(harness.product_env(env), workdir)
    fleet.start("router", "run")
    fleet.start("worker-a", "worker", "--name", "host-a")
    fleet.start("worker-b", "worker", "--name", "host-b")
    client = redis_server.client()
    month, stop = Month(), threading.Event()
    rng = random.Random(seed)
    began = time.monotonic()
    sample(client, month, began)
    drivers = [
        threading.Thread(target=customers, args=(dovecot, month, stop, day, began, rng)),
        threading.Thread(target=csms_and_replies,
                         args=(dovecot, smtp, month, stop, day, close_after,
                               random.Random(seed + 1))),
        threading.Thread(target=faults, args=(fleet, redis_server, smtp, month, stop,
                                              max(30.0, 3 * day), began)),
    ]
    for thread in drivers:
        thread.start()
    length = days * day
    while time.monotonic() - began < length:
        time.sleep(5)
        sample(client, month, began)
        s = month.samples[-1]
        print(f"{s['t']:6.0f}s  day {s['t'] / day:4.1f}  memory {s['memory'] / 1e6:6.2f} MB  "
              f"keys {s['keys']:6.0f}  open {s['open']:4.0f}  held {s['held']:3.0f}  "
              f"mail in {len(month.customers)}  out {len(smtp.messages)}", flush=True)
    stop.set()
    drivers[0].join()
    drivers[2].join()
    # Drain: CSMs keep answering until every forward went out and nothing is held.
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        forwarded = {str(m.message["In-Reply-To"]) for m in smtp.messages
                     if m.rcpt_tos[0] in CSMS}
        if all(c in forwarded for c in month.customers) and not client.zcard("csm:held"):
            break
        time.sleep(2)
    time.sleep(15)  # anything sent twice would arrive in this time
    drivers[1].join()
    codes = fleet.stop_all()
    return report(month, smtp, client, codes, workdir, fleet, length)


def report(month: Month, smtp: RecordingSmtp, client: redis_lib.Redis, codes: dict[str, int],
           workdir: Path, fleet: Fleet, length: float) -> int:
    forwards = [m for m in smtp.messages if m.rcpt_tos[0] in CSMS]
    carried = {str(m.message["In-Reply-To"]) for m in forwards}
    missing = [c for c in month.customers if c not in carried]
    twice = {mid: n for mid, n in Counter(str(m.message["Message-ID"])
                                          for m in smtp.messages).items() if n > 1}
    held = int(client.zcard("csm:held"))
    samples = month.samples
    # A thread lives until it closes (days after its last mail, and customers come back)
    # and then for the seven days of retention: by mid-month everything kept is in its cycle.
    warm = length / 2
    after = [s for s in samples if s["t"] >= warm]
    half = len(after) // 2
    first = sum(s["memory"] for s in after[:half]) / max(half, 1)
    second = sum(s["memory"] for s in after[half:]) / max(len(after) - half, 1)
    growth = (second - first) / first if first else float("nan")
    peak_open = max(s["open"] for s in samples)
    out = harness.ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    plot(month, out / "soak.png", warm)
    tracebacks = sum((workdir / f"{p}.log").read_text().count("Traceback") for p in fleet.procs)
    print(f"{len(month.customers)} customer messages, {len(month.answered)} CSM answers, "
          f"{len(month.faults)} faults: {', '.join(w for _, w in month.faults[:6])} ...")
    print(f"forwards {len(forwards)}; missing {len(missing)}; sent twice {len(twice)}; "
          f"held at the end {held}; peak open threads {peak_open:.0f} "
          f"(capacity {len(CSMS) * MAX_OPEN})")
    print(f"Redis memory after warm-up: {first / 1e6:.2f} MB then {second / 1e6:.2f} MB "
          f"({growth:+.1%}); keys at the end {samples[-1]['keys']:.0f}")
    print(f"exit codes after SIGTERM: {codes}; tracebacks in the logs: {tracebacks}")
    print(f"plot: {out / 'soak.png'}")
    harness.save("soak", {"customers": len(month.customers), "forwards": len(forwards),
                          "missing": len(missing), "twice": len(twice), "held": held,
                          "peak_open": peak_open, "memory_first": first,
                          "memory_second": second, "growth": growth,
                          "faults": [w for _, w in month.faults], "samples": samples})
    ok = (not missing and not twice and not held and peak_open <= len(CSMS) * MAX_OPEN
          and growth < 0.15 and not any(codes.values()))
    print("a month later, still right" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
