"""Several teams from one command (ROUTER_TEAMS): `run` and `worker` start one process per
team and stop with them; read-only commands answer for each team in turn; the others ask
which team (`--team`)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from csm_router.config import ConfigError, load_settings
from csm_router.config.teams import TeamError, configured_teams, in_team, use_team

SUPERVISED = frozenset({"run", "worker"})  # one process per team
ALL_TEAMS = frozenset({"web", "lmtp", "demo", "health", "login"})  # one process serves them all
# Without --team, these answer for each team in turn (forget: a person may be in several).
EACH_TEAM = frozenset({"status", "report", "digest", "threads", "check", "failed", "forget"})
PARENT = "CSM_ROUTER_PARENT"  # a team's process: the pid of the command that started it
POLL_SECONDS = 1.0


def dispatch(args: argparse.Namespace, argv: Sequence[str],
             run: Callable[[argparse.Namespace], int]) -> int:
    """Run the command for the team it names, for every team, or as it is (no teams)."""
    teams = _teams()
    team = (args.team or "").strip().lower()
    if team:
        if team not in teams:
            raise ConfigError("--team", f"{team} is not among ROUTER_TEAMS "
                              f"({', '.join(teams) or 'not set'})")
        use_team(team)
        _follow_parent()
        return run(args)
    if not teams:
        return run(args)
    if args.command in SUPERVISED:
        if args.command == "run":
            _own_mailboxes(teams)
        return supervise(list(argv), teams)
    if args.command in ALL_TEAMS:
        return run(args)
    if args.command in EACH_TEAM and not getattr(args, "json", False) and not getattr(
            args, "csv", False) and getattr(args, "action", "list") == "list":
        code = 0
        for name in teams:
            print(f"== team {name}", flush=True)
            with in_team(name):
                code = max(code, run(args))
        return code
    raise ConfigError("--team", f"ROUTER_TEAMS is set: say which team this is for "
                      f"(--team {' or --team '.join(teams)})")


def _own_mailboxes(teams: Sequence[str]) -> None:
    """Two teams watching one mailbox would both route every message in it: refused."""
    seen: dict[tuple[str, int, str, str], str] = {}
    for team in teams:
        with in_team(team):
            url = load_settings("imap_url").required_imap()
        mailbox = (url.host.lower(), url.port, url.username.lower(), url.path or "INBOX")
        if mailbox in seen:
            raise ConfigError(f"ROUTER_{team.upper()}_IMAP_URL", f"names the mailbox team "
                              f"{seen[mailbox]} watches: each team needs a mailbox of its own")
        seen[mailbox] = team


def _teams() -> tuple[str, ...]:
    try:
        return configured_teams()
    except TeamError as exc:
        raise ConfigError("ROUTER_TEAMS", str(exc)) from None


def supervise(argv: list[str], teams: Sequence[str]) -> int:
    """One `csm-router <argv> --team T` per team. SIGTERM and SIGINT reach them all. A
    batch run (`--exit-when-idle`, `--burst`) waits for every team; a long-running one
    stops the others once one ends, and answers its exit code (systemd restarts the lot)."""
    batch = "--exit-when-idle" in argv or "--burst" in argv
    env = os.environ | {PARENT: str(os.getpid())}
    children = {team: subprocess.Popen([sys.executable, "-m", "csm_router.cli", *argv,
                                        "--team", team], env=env) for team in teams}

    stopping: list[int] = []  # the signals passed on: a child they ended stopped cleanly

    def forward(signum: int, frame: Any) -> None:
        stopping.append(signum)
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes: dict[str, int] = {}
    while len(codes) < len(children):
        for team, child in children.items():
            if team not in codes and (code := child.poll()) is not None:
                # Ended by a signal passed on before it could catch it (still starting):
                # stopped as asked. By any other signal: 128 + its number, as a shell says.
                codes[team] = 0 if -code in stopping else 128 - code if code < 0 else code
                if not batch and code != 0:
                    print(f"csm-router: team {team} stopped (exit code {code}): stopping "
                          "the other teams", file=sys.stderr, flush=True)
                    forward(signal.SIGTERM, None)
        time.sleep(0.2)
    return max(codes.values(), default=0)


def _follow_parent() -> None:
    """A team's process started by `supervise` ends with it, even after a kill -9."""
    parent = os.environ.get(PARENT)
    if not parent or not parent.isdigit():
        return

    def watch() -> None:
        while os.getppid() == int(parent):
            time.sleep(POLL_SECONDS)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
