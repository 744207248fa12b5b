"""The commands that run the product: router, worker, web, health, sweep and demo."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time

from csm_router import jobs
from csm_router.auth import authserv_note, steering_note
from csm_router.cli_shared import _parse_until, _runtime, _setup_logging, out
from csm_router.config import Settings, load_settings
from csm_router.connect import redis_client
from csm_router.dispatch import stop_on_signals
from csm_router.errors import PermanentError, TransientError
from csm_router.mailbox import Mailbox
from csm_router.router import Router

log = logging.getLogger("csm_router")


def cmd_run(args: argparse.Namespace) -> int:
    rt = _runtime()
    _setup_logging(rt.settings)
    stop = threading.Event()
    stop_on_signals(stop, "the current message")
    mailbox = Mailbox(rt.settings.required_imap(), rt.settings.quarantine_folder)
    log.info("router watching %s", mailbox.name)
    _log_steering(rt.settings)
    Router(rt, mailbox, stop=stop).run(exit_when_idle=args.exit_when_idle)
    return 0


def _log_steering(settings: Settings) -> None:
    """Say who may steer; with nothing configured, also whose results the alias gets."""
    trust = steering_note(settings.trusted_authserv_id, settings.reply_secret is not None)
    if settings.trusted_authserv_id:
        log.info("%s", trust)
        return
    if settings.reply_secret is None:
        box = Mailbox(settings.required_imap(), settings.quarantine_folder, timeout=20)
        try:  # a hint only: the router itself waits out a server that is down
            box.connect()
            seen = ("the alias has no mail yet" if box.empty() else
                    authserv_note(box.latest_header("Authentication-Results"), None, False)[1])
        except (TransientError, PermanentError) as exc:
            seen = f"the latest mail in the alias could not be read ({exc})"
        finally:
            box.close()
        trust = f"{trust}; {seen}"
    log.warning("%s", trust)


def cmd_worker(args: argparse.Namespace) -> int:
    from csm_router.worker import run_worker

    rt = _runtime()
    _setup_logging(rt.settings)
    rt.settings.required_smtp()
    stop = threading.Event()
    run_worker(rt, name=args.name, burst=args.burst, stop=stop)
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    from csm_router.web import serve

    settings = load_settings()
    _setup_logging(settings)
    serve(settings, redis_client(settings.redis_url))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    from csm_router.web import health_url, probe

    url = args.url or health_url(load_settings())
    healthy, said = probe(url)
    print(said, end="" if said.endswith("\n") else "\n", file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


def cmd_sweep(args: argparse.Namespace) -> int:
    rt = _runtime()
    _setup_logging(rt.settings)
    jobs.configure(rt)
    now = _parse_until(args.at) if args.at else time.time()
    out.print(jobs.sla_sweep(now))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from csm_router.demo import run_demo

    return run_demo()
