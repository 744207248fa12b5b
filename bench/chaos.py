"""Faults under a stream of mail, end to end: every message forwarded exactly once?

Starts a real Dovecot (mail delivered by LMTP), a redis-server that persists every write,
and a recording SMTP relay, then the real `csm-router run` and two `csm-router worker`
processes (one with a stable --name, one without, as the Procfile runs it). While N
customer messages arrive, it kills and restarts processes and servers on a schedule:
workers and the router with SIGKILL, Redis gracefully and with SIGKILL, the relay taken
away for a while. Among the mail are strangers quoting other customers' references and
forged replies claiming to be a CSM. At the end it counts what the relay got.

Usage: `./scripts/chaos [N]` (default 200).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from email.message import EmailMessage
from pathlib import Path

import harness  # puts tests/ on the path for what follows

from csm_router.demo.relay import RecordingSmtp
from csm_router.demo.stage import compose
from support.servers import DovecotServer, RedisServer

USER = "success@acme.com"
POOL = "alice@acme.com*2, bob@acme.com, carol@acme.com"


class Fleet:
    """The product's processes, started and killed as an operator (or the kernel) would."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env, self.workdir = env, workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> None:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115  # lives with the process
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "csm_router.cli", *args], env=self.env, cwd=self.workdir,
            stdout=log, stderr=log, start_new_session=True)

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> dict[str, int]:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        return {name: proc.wait(30) for name, proc in self.procs.items()}


def _text(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    return str(body.get_content()) if body is not None else ""


def main(count: int) -> int:
    with harness.servers("chaos", persistent=True) as found:
        return run(count, found.dovecot, found.redis, found.smtp, found.workdir)


def run(count: int, dovecot: DovecotServer, redis_server: RedisServer, smtp: RecordingSmtp,
        workdir: Path) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    env.update(
        ROUTER_IMAP_URL=dovecot.imap_url(USER), ROUTER_SMTP_URL=smtp.url,
        ROUTER_REDIS_URL=redis_server.url, ROUTER_ALIAS=f"Acme CS <{USER}>",
        ROUTER_POOL=POOL, ROUTER_POLL_SECONDS="1", ROUTER_TRUSTED_AUTHSERV_ID="mx.acme.test",
        ROUTER_OVERFLOW_ADDRESS="cs-lead@acme.com",
    )
    fleet = Fleet(env, workdir)
    fleet.start("router", "run")
    fleet.start("worker-a", "worker", "--name", "host-a")
    fleet.start("worker-b", "worker")

    customers: list[str] = []
    forged = strangers = 0

    def stream() -> None:
        nonlocal forged, strangers
        for n in range(count):
            if n % 10 == 5 and n > 20:  # a stranger quotes another customer's reference
                strangers += 1
                subject = f"Re: [CS-{1001 + n % 20}] Can I see that thread?"
                sender = f"Eve {n} <eve{n}@stranger{n}.net>"
            else:
                subject, sender = f"Question {n:04d}", f"C{n} <c{n}@customer{n % 40}.com>"
            message_id, raw = compose(sender, subject, "Hello,\n\nhow do I export?\n")
            dovecot.deliver(USER, raw)
            customers.append(message_id)
            if n % 25 == 12:  # a forged reply: "from" a CSM, no proof, a command in it
                forged += 1
                _, fake = compose("alice@acme.com", f"Re: [CS-{1001 + n % 20}] x",
                                  "#reassign bob@acme.com\n", to="someone@customer1.com",
                                  cc=USER)
                dovecot.deliver(USER, fake)
            time.sleep(0.05)

    faults: list[str] = []

    def fault(at: float, what: str, action: object) -> None:
        time.sleep(max(0.0, at - (time.monotonic() - began)))
        faults.append(f"{time.monotonic() - began:5.1f}s {what}")
        action()  # type: ignore[operator]

    def restart_redis(kill: bool, down: float) -> None:
        redis_server.restart(down, kill=kill)

    def relay_away(seconds: float) -> None:
        port = smtp.port
        smtp.stop()
        time.sleep(seconds)
        smtp.start(port=port)

    began = time.monotonic()
    sender = threading.Thread(target=stream)
    sender.start()
    schedule = [
        (2.0, "worker-a (named) SIGKILLed and restarted",
         lambda: (fleet.kill("worker-a"), fleet.start("worker-a", "worker", "--name", "host-a"))),
        (4.0, "Redis stopped gracefully, 5 s down", lambda: restart_redis(False, 5)),
        (11.0, "router SIGKILLed, restarted 2 s later",
         lambda: (fleet.kill("router"), time.sleep(2), fleet.start("router", "run"))),
        (14.0, "worker-b (no name) SIGKILLed and restarted",
         lambda: (fleet.kill("worker-b"), fleet.start("worker-b", "worker"))),
        (16.0, "Redis SIGKILLed, 2 s down", lambda: restart_redis(True, 2)),
        (20.0, "relay gone for 8 s", lambda: relay_away(8)),
    ]
    for at, what, action in schedule:
        fault(at, what, action)
    sender.join()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(smtp.messages) < len(customers):
        time.sleep(1)
    time.sleep(20)  # anything sent twice would arrive in this time
    codes = fleet.stop_all()

    forwards = [m for m in smtp.messages if m.rcpt_tos[0] in
                ("alice@acme.com", "bob@acme.com", "carol@acme.com")]
    carried = Counter(str(m.message["In-Reply-To"]) for m in forwards)
    missing = [m for m in customers if carried[m] == 0]
    doubled = {m: c for m, c in carried.items() if c > 1}
    stranger_joined = sum(1 for m in forwards
                          if "stranger" in str(m.message["Reply-To"])
                          and "another customer's thread" not in _text(m.message))
    tracebacks = sum((workdir / f"{p}.log").read_text().count("Traceback") for p in fleet.procs)
    print(f"{len(customers)} customer messages ({strangers} strangers quoting others' "
          f"references), {forged} forged CSM replies")
    print("faults:")
    for line in faults:
        print(f"  {line}")
    print(f"forwards at the relay: {len(forwards)}; missing {len(missing)}; sent twice "
          f"{len(doubled)}; strangers joined another's thread {stranger_joined}")
    print(f"other mail at the relay: {len(smtp.messages) - len(forwards)} "
          f"(a forged #reassign would have sent a confirmation)")
    print(f"exit codes after SIGTERM: {codes}; tracebacks in the logs: {tracebacks}")
    ok = not missing and not doubled and not stranger_joined and not any(codes.values())
    print("every message forwarded exactly once" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200))
