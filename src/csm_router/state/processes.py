"""Which processes run, and what they counted: the counters and beats in Redis.

Counters live in one Redis hash, `csm:metrics`, written by the same scripts and
transactions that do the counted work, so a message is counted once however many routers
fetch it. A field is a family name and its label values, tab-separated (see
`lua/common.lua`'s `count`); lead/metrics.py turns them into Prometheus metrics.

Each process also writes a line about itself to `csm:procs` (role, host, its poll
interval, IMAP state, last beat), which `/healthz` and the heartbeat gauges read.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from redis import Redis

from csm_router import __version__
from csm_router.state.keys import key, text


def metrics_key() -> str:
    """The counters' hash of the team in hand."""
    return key("metrics")


def procs_key() -> str:
    """The processes' reports of the team in hand."""
    return key("procs")
# The mail server stamps its receipt to the second, so finer buckets would be noise.
FORWARD_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
HISTOGRAM = "forward_seconds"
# A process silent this long left for good (a host gone, a container replaced): forget
# it. Alert on the heartbeat gauge for anything quicker.
PROC_FORGET_SECONDS = 3600
ROUTER_GRACE_SECONDS = 5  # a pass of mail beats every ten messages; IDLE wakes within the poll


def bucket_of(seconds: float) -> str:
    """The histogram field a forward taking `seconds` counts in (non-cumulative)."""
    for bound in FORWARD_BUCKETS:
        if seconds <= bound:
            return f"{HISTOGRAM}\tle\t{bound:g}"
    return f"{HISTOGRAM}\tle\t+Inf"


def observe_forward(pipe: Any, seconds: float) -> None:
    """Queue on `pipe` one forward that took `seconds` from receipt to the relay's accept."""
    seconds = max(seconds, 0.0)
    pipe.hincrby(metrics_key(), bucket_of(seconds), 1)
    pipe.hincrbyfloat(metrics_key(), f"{HISTOGRAM}\tsum", seconds)


@dataclass(frozen=True)
class Proc:
    """One router or worker as it last reported itself."""

    id: str
    role: str
    name: str
    host: str
    pid: int
    beat: float
    poll: float
    imap: str  # routers: "connected", "disconnected" or "refused"; workers: ""
    version: str

    def silent_for(self, now: float) -> float:
        return max(now - self.beat, 0.0)

    @property
    def public_id(self) -> str:
        """Stable for this process, and naming neither its login, host nor pid."""
        return hashlib.sha256(self.id.encode()).hexdigest()[:8]

    def label(self, detailed: bool) -> str:
        """How /healthz names it: by name, pid and host to someone who logged in."""
        if detailed:
            return f"{self.name} (pid {self.pid} on {self.host})"
        return self.public_id

    def late(self, now: float) -> bool:
        """A router is late once silent for longer than its poll interval (and a pass)."""
        return self.role == "router" and self.silent_for(now) > self.poll + ROUTER_GRACE_SECONDS


class ProcessBeat:
    """This process's line in `csm:procs`, renewed by its main loop."""

    def __init__(self, redis: Redis, role: str, name: str | None = None,
                 poll: float = 0.0) -> None:
        self.redis, self.role, self.poll = redis, role, poll
        self.host = socket.gethostname()
        self.name = name or self.host
        self.pid = os.getpid()
        self.id = f"{role}:{self.name}@{self.host}:{self.pid}"
        self.imap = ""
        self.beaten = float("-inf")

    def beat(self, now: float | None = None, *, pipe: Any = None) -> None:
        """Report in now (on `pipe`, if given, for the caller to execute)."""
        self.beaten = now if now is not None else time.time()
        line = {"role": self.role, "name": self.name, "host": self.host,
                "pid": self.pid, "beat": self.beaten,
                "poll": self.poll, "imap": self.imap, "version": __version__}
        (pipe if pipe is not None else self.redis).hset(procs_key(), self.id, json.dumps(line))

    def keep_alive(self, now: float, every: float = 1.0) -> None:
        """Report in during long work, at most once per `every` seconds."""
        if now - self.beaten >= every:
            self.beat(now)

    def forget(self) -> None:
        """A clean stop: this process is gone on purpose, not late."""
        self.redis.hdel(procs_key(), self.id)


def processes(redis: Redis, now: float | None = None) -> list[Proc]:
    """Every process that reported itself within PROC_FORGET_SECONDS, oldest first."""
    now = now if now is not None else time.time()
    found = []
    for field, value in (redis.hgetall(procs_key()) or {}).items():
        try:
            line = json.loads(value)
            proc = Proc(text(field), str(line["role"]), str(line["name"]), str(line["host"]),
                        int(line["pid"]), float(line["beat"]), float(line.get("poll") or 0),
                        str(line.get("imap") or ""), str(line.get("version") or ""))
        except (ValueError, KeyError, TypeError):
            continue  # not ours to judge; a later beat overwrites it
        if proc.silent_for(now) <= PROC_FORGET_SECONDS:
            found.append(proc)
    return sorted(found, key=lambda p: p.beat)


def forget_stale(redis: Redis, now: float | None = None) -> None:
    """Drop the lines of processes that are gone: killed on this host (a process that
    stops cleanly drops its own), or silent for longer than PROC_FORGET_SECONDS."""
    now = now if now is not None else time.time()
    procs = processes(redis, now)
    here = socket.gethostname()
    keep = {p.id for p in procs if p.host != here or p.pid == os.getpid() or _running(p.pid)}
    stale = [f for f in map(text, redis.hkeys(procs_key()) or []) if f not in keep]
    if stale:
        redis.hdel(procs_key(), *stale)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, but alive
    return True


def check_routers(redis: Redis, now: float | None = None,
                  *, detailed: bool = False) -> tuple[list[str], list[Proc]]:
    """What is wrong with the deployment (empty when healthy), and its routers, from one
    read of Redis; routers are named by login, host and pid only when `detailed`.

    Healthy: Redis answers, at least one router reported itself, and every router beat
    within its poll interval (plus a grace for a pass of mail).
    """
    now = now if now is not None else time.time()
    try:
        procs = processes(redis, now)
    except Exception as exc:  # any way Redis fails is the answer itself
        return [f"Redis unreachable: {exc}"], []
    routers = [p for p in procs if p.role == "router"]
    if not routers:
        return ["no router has reported itself: is `csm-router run` running?"], []
    problems = [f"router {p.label(detailed)} silent for "
                f"{p.silent_for(now):.0f}s, over its poll interval of {p.poll:g}s"
                for p in routers if p.late(now)]
    problems += [f"router {p.label(detailed)} "
                 + ("is refused by IMAP" if p.imap == "refused" else "has no IMAP connection")
                 for p in routers if not p.late(now) and p.imap != "connected"]
    return problems, routers
