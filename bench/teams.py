"""Ten teams on one Redis: aggregate throughput and each team's latency.

Each team has its own alias mailbox on Dovecot and its own pool; one `csm-router run` and
one `csm-router worker` serve them all (a process per team each, as ROUTER_TEAMS runs
them: ten routers and ten workers), on one redis-server. Realistic mail is delivered to
the ten aliases in turn, 50 ms apart in all (each team's mail 500 ms apart), then as one
burst. The baseline, in the same run, is one team alone with the same mail.

Usage: `python bench/teams.py [N]` (N messages per team, default 100). Prints the figures
and writes `bench/results/teams.json`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import harness
from e2e import next_user, wait_for
from harness import pct
from workloads import Parser, realistic

from csm_router.demo.relay import RecordingSmtp
from support.servers import DovecotServer, RedisServer

TEAMS = 10
GAP = 0.05


def start(dovecot: DovecotServer, redis: RedisServer, smtp: RecordingSmtp, workdir: Path,
          teams: int) -> tuple[list[subprocess.Popen[bytes]], dict[str, str]]:
    """`csm-router run` and `csm-router worker` for `teams` teams; answers the processes
    and each team's alias."""
    with redis.client() as client:
        client.flushall()
    names = [f"t{n}" for n in range(teams)]
    aliases = {name: next_user() for name in names}
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    env.update(ROUTER_SMTP_URL=smtp.url, ROUTER_REDIS_URL=redis.url, ROUTER_LOG_LEVEL="INFO",
               ROUTER_POLL_SECONDS="30", ROUTER_SUPPORT_ADDRESS="support@acme.com",
               ROUTER_TEAMS=",".join(names),
               # The shared settings are the first team's; each team overrides its own.
               ROUTER_ALIAS=aliases[names[0]], ROUTER_POOL="alice@acme.com",
               ROUTER_IMAP_URL=dovecot.imap_url(aliases[names[0]]))
    for name in names:
        up = name.upper()
        env[f"ROUTER_{up}_ALIAS"] = f"Team {name} <{aliases[name]}>"
        env[f"ROUTER_{up}_IMAP_URL"] = dovecot.imap_url(aliases[name])
        env[f"ROUTER_{up}_POOL"] = f"a-{name}@acme.com*2, b-{name}@acme.com, c-{name}@acme.com"
    log = open(workdir / f"teams-{teams}.log", "ab")  # noqa: SIM115  # closed with the run
    cmd = [sys.executable, "-m", "csm_router.cli"]
    env = harness.product_env(env)
    procs = [subprocess.Popen([*cmd, command], env=env, stdout=log, stderr=log)
             for command in ("worker", "run")]
    # Every team's router watching and worker listening before the clock starts.
    said = workdir / f"teams-{teams}.log"
    deadline = time.monotonic() + 120
    while not all(f"[{name}] csm_router.app.router: watching" in (text := said.read_text())
                  and f"Listening on {name}-deliver" in text for name in names):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not every team started: see {said}")
        time.sleep(0.2)
    return procs, aliases


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(60)


def redis_cpu(redis: RedisServer) -> float:
    """CPU seconds redis-server has used, its own and the kernel's on its behalf."""
    with redis.client() as client:
        info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def team_of(rcpt: str) -> str:
    return rcpt.split("@")[0].split("-", 1)[1]


def measure(servers: harness.Servers, teams: int, per_team: int, burst: int) -> dict[str, Any]:
    """Spaced latencies per team, then the aggregate rate of a burst of `burst` messages
    spread over the teams, for `teams` teams."""
    dovecot, smtp = servers.dovecot, servers.smtp
    procs, aliases = start(dovecot, servers.redis, smtp, servers.workdir, teams)
    names = list(aliases)
    try:
        with Parser(smtp):
            smtp.clear()
            delivered: dict[str, float] = {}
            for n in range(per_team * len(names)):
                team = names[n % len(names)]
                dovecot.deliver(aliases[team], realistic(n, aliases[team], "spaced"))
                delivered[f"spaced {n:05d}"] = time.time()
                time.sleep(GAP)
            wait_for(smtp, len(delivered))
            waits: dict[str, list[float]] = {name: [] for name in names}
            for r in smtp.messages:
                waits[team_of(r.rcpt_tos[0])].append(
                    r.at - delivered[str(r.message["Subject"]).split("] ", 1)[1]])
        with Parser(smtp):
            smtp.clear()
            count = burst
            raws = [(aliases[names[n % len(names)]], realistic(n, "", "burst"))
                    for n in range(count)]
            cpu_before = redis_cpu(servers.redis)
            started = time.time()
            for alias, raw in raws:
                dovecot.deliver(alias, raw)
            wait_for(smtp, count)
            rate = count / (max(r.at for r in smtp.messages) - started)
            redis_ms = (redis_cpu(servers.redis) - cpu_before) / count * 1000
    finally:
        stop(procs)
    return {"burst_per_s": rate, "redis_cpu_ms_per_msg": redis_ms,
            "p50_ms": {t: pct(w, 50) * 1000 for t, w in waits.items()},
            "p99_ms": {t: pct(w, 99) * 1000 for t, w in waits.items()}}


def report(r: dict[str, Any]) -> None:
    one, ten = r["one_team"], r["ten_teams"]
    print(f"\n{TEAMS} teams on one Redis, a router and a worker process per team "
          f"({r['per_team']} realistic messages per team)")
    ratio = ten["burst_per_s"] / one["burst_per_s"]
    print(f"burst of {r['per_team'] * TEAMS}, spread over the teams: "
          f"{ten['burst_per_s']:.1f} msg/s; to one team alone, same run: "
          f"{one['burst_per_s']:.1f} msg/s ({ratio:.2f}x)")
    cost = ten["redis_cpu_ms_per_msg"]
    print(f"Redis CPU per routed and forwarded message: {cost:.2f} ms (one team alone: "
          f"{one['redis_cpu_ms_per_msg']:.2f} ms): one Redis core is spent at about "
          f"{1000 / cost:.0f} msg/s")
    print(f"spaced ({GAP * 1000:.0f} ms apart in all), delivery to relay, each team's "
          "p50 / p99 ms:")
    for team in ten["p99_ms"]:
        print(f"  {team:<4} {ten['p50_ms'][team]:6.0f} / {ten['p99_ms'][team]:6.0f}")
    (team,) = one["p99_ms"]
    print(f"  one team alone: {one['p50_ms'][team]:6.0f} / {one['p99_ms'][team]:6.0f}")


def main(per_team: int) -> None:
    with harness.servers("teams") as servers:
        results = {"per_team": per_team,
                   "one_team": measure(servers, 1, per_team, per_team * TEAMS),
                   "ten_teams": measure(servers, TEAMS, per_team, per_team * TEAMS)}
    report(results)
    harness.save("teams", results)


if __name__ == "__main__":
    args = harness.arguments(sys.argv[1:])
    main(int(args[0]) if args else 100)
