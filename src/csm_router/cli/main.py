"""The `csm-router` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

import redis
import shtab

from csm_router import __version__
from csm_router.cli.admin import add_admin_commands
from csm_router.cli.check import cmd_check
from csm_router.cli.figures import add_figure_commands
from csm_router.cli.processes import (
    cmd_demo,
    cmd_health,
    cmd_lmtp,
    cmd_run,
    cmd_sweep,
    cmd_web,
    cmd_worker,
)
from csm_router.cli.teams import dispatch
from csm_router.cli.threads import cmd_failed, cmd_reassign, cmd_thread, cmd_threads
from csm_router.config import ConfigError
from csm_router.errors import PermanentError, RefusedError, TransientError
from csm_router.state import pool

# -- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="csm-router", description="Route a pooled Customer Success inbox to each CSM."
    )
    parser.add_argument("--version", action="version", version=f"csm-router {__version__}")
    # `csm-router --print-completion bash > /etc/bash_completion.d/csm-router` (or zsh).
    shtab.add_argument_to(parser, ["--print-completion"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        p.add_argument("--team", metavar="NAME", help="the team (one of ROUTER_TEAMS)")
        return p

    p = add("run", cmd_run, "watch the alias mailbox and route each new message")
    p.add_argument("--exit-when-idle", action="store_true",
                   help="stop once nothing new is left (for batch runs and tests)")
    p = add("worker", cmd_worker, "RQ worker for the deliver and support queues")
    p.add_argument("--burst", action="store_true", help="stop when the queues are empty")
    p.add_argument("--name", help="a stable name, unique among live workers (e.g. host-1): "
                   "on restart, what the previous worker of that name had in hand is taken "
                   "up at once instead of after its heartbeat expires")
    add("lmtp", cmd_lmtp, "take mail straight from the MTA over LMTP on ROUTER_LMTP_ADDRESS "
        "and route it at once (the alias mailbox still receives it)")
    add("web", cmd_web, "serve /metrics, /healthz and the status page on ROUTER_WEB_ADDRESS")
    p = add("health", cmd_health, "ask `csm-router web` whether the deployment is healthy "
            "(exit 0) or not (exit 1, with the reason): for container health checks")
    p.add_argument("--url", help="default: /healthz at ROUTER_WEB_ADDRESS")
    add("check", cmd_check, "validate configuration and log in to Redis, IMAP and SMTP")
    p = add("demo", cmd_demo, "run the whole product on embedded servers and show what happens")
    p.add_argument("--keep-running", action="store_true",
                   help="at the end, keep the status page open until Enter or Ctrl-C")
    p = add("sweep", cmd_sweep, "run one first-response sweep now (the worker runs one every 30s)")
    p.add_argument("--at", help="as if it were this time (UTC unless given), e.g. 2026-12-01T09:00")
    add_admin_commands(add)
    p = add("threads", cmd_threads, "the newest threads")
    p.add_argument("--json", action="store_true")
    p.add_argument("--limit", type=int, default=50)
    p = add("thread", cmd_thread, "one thread and its whole history")
    p.add_argument("ref", help="e.g. CS-1042")
    p = add("reassign", cmd_reassign, "give a thread to another CSM")
    p.add_argument("ref")
    p.add_argument("address")
    p = add("failed", cmd_failed, "sends that failed for good: list, show, retry or drop them")
    p.add_argument("action", nargs="?", default="list", choices=("list", "show", "retry", "drop"))
    p.add_argument("id", nargs="?", help="as `failed list` shows it")
    p.add_argument("--json", action="store_true")
    add_figure_commands(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; exit codes: 0 fine, 2 configuration (a setting, a template, a
    login or folder a server refuses), 1 anything else (a server unreachable, a usage
    error, a thread not found). Every failure is said in one line per problem."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return dispatch(args, argv, lambda a: int(a.func(a)))
    except ConfigError as exc:
        lines = str(exc).splitlines()
        if len(lines) == 1:
            return _fail(f"configuration error: {lines[0]}", 2)
        return _fail("\n".join([f"configuration error: {len(lines)} problems",
                                 *(f"  {line}" for line in lines)]), 2)
    except RefusedError as exc:
        return _fail(str(exc), 2)
    except redis.AuthenticationError as exc:
        return _fail(f"Redis refused the login ({exc}): fix the password in ROUTER_REDIS_URL",
                     2)
    except (pool.PoolError, PermanentError, TransientError) as exc:
        return _fail(str(exc), 1)
    except redis.ConnectionError as exc:
        return _fail(f"Redis unreachable ({exc}): check ROUTER_REDIS_URL and that Redis is "
                     "running", 1)


def _fail(said: str, code: int) -> int:
    print(f"csm-router: {said}", file=sys.stderr)
    return code


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error exits 1: 2 means a configuration to fix."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(1, f"{self.prog}: error: {message}\n")


if __name__ == "__main__":
    sys.exit(main())
