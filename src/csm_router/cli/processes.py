"""The commands that run the product: router, worker, web, health, sweep and demo."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import aiosmtplib
import redis

from csm_router.app.router import Router
from csm_router.cli.shared import _parse_until, _runtime, _setup_logging, out
from csm_router.config import ConfigError, Settings, is_loopback, load_settings
from csm_router.config.teams import current_team, in_team
from csm_router.core.auth import authserv_note, steering_note
from csm_router.errors import PermanentError, RefusedError, TransientError
from csm_router.mail.mailbox import Mailbox
from csm_router.mail.outbound import require_templates
from csm_router.mail.smtp import smtp_session
from csm_router.runtime import Runtime, stop_on_signals
from csm_router.sends import jobs
from csm_router.state.connect import redis_client

log = logging.getLogger("csm_router")
T = TypeVar("T")


def _start(*needs: str) -> Settings:
    """A process's settings, all checked before it does anything: every variable, and
    every template it may render (a broken one stops it now, named by file and line)."""
    settings = load_settings(*needs)
    require_templates(settings.templates_dir)
    return settings


def cmd_run(args: argparse.Namespace) -> int:
    rt = Runtime.from_settings(_start("imap_url"))
    _setup_logging(rt.settings)
    stop = threading.Event()
    stop_on_signals(stop, "the current message")
    mailbox = Mailbox(rt.settings.required_imap(), rt.settings.quarantine_folder)
    log.info("router watching %s", mailbox.name)
    # Said beside routing, not before it: reading the latest mail takes a login and a
    # SELECT of its own, seconds on a big mailbox, which the first customer would wait.
    hint = threading.Thread(target=_log_steering, args=(rt.settings,), name="steering-hint",
                            daemon=True)
    hint.start()
    Router(rt, mailbox, stop=stop).run(exit_when_idle=args.exit_when_idle)
    hint.join(timeout=20)
    return 0


def cmd_lmtp(args: argparse.Namespace) -> int:
    from csm_router.app.lmtp import Teams, serve

    settings = _start()
    _setup_logging(settings)
    host, port = settings.lmtp_bind
    # One listener for every team: the recipient says whose alias the mail is for.
    runtimes = _each_team(settings, Runtime.from_settings)
    if not is_loopback(host):
        log.warning("LMTP on %s: whoever reaches it hands over mail as the MTA would, its "
                    "Authentication-Results taken as checked; let only the MTA reach it",
                    settings.lmtp_address)
    stop = threading.Event()
    stop_on_signals(stop, "the current message")
    try:
        serve(Teams(runtimes), host, port, stop, max_bytes=settings.max_message_bytes)
    except OSError as exc:
        raise ConfigError("ROUTER_LMTP_ADDRESS", f"cannot listen on {settings.lmtp_address}: "
                          f"{exc.strerror or exc}") from None
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
        except RefusedError:
            return  # the router's own login is refused too, and says so as it stops
        except (TransientError, PermanentError) as exc:
            seen = f"the latest mail in the alias could not be read ({exc})"
        finally:
            box.close()
        trust = f"{trust}; {seen}"
    log.warning("%s", trust)


def cmd_worker(args: argparse.Namespace) -> int:
    from csm_router.app.worker import run_worker

    rt = Runtime.from_settings(_start("smtp_url"))
    _setup_logging(rt.settings)
    _smtp_login(rt.settings)
    stop = threading.Event()
    run_worker(rt, name=args.name, burst=args.burst, stop=stop)
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    from csm_router.app.web import serve

    settings = _start()
    _setup_logging(settings)
    client = _reachable(settings)
    if settings.teams and not current_team():
        # One web process for every team: each team's page under /<team>/.
        from csm_router.app.teamsweb import create_teams_app

        teams = _each_team(settings, lambda own: (own, _reachable(own)))
        serve(settings, client, create_teams_app(settings, teams))
        return 0
    serve(settings, client)
    return 0


def _each_team(settings: Settings, make: Callable[[Settings], T]) -> dict[str, T]:
    """For a process serving every team (ROUTER_TEAMS, no --team): `make` of each team's
    settings (checked as `_start` checks them), run in that team (its keys, its queues);
    otherwise `make` of `settings` alone, under the name ""."""
    if not settings.teams or current_team():
        return {"": make(settings)}
    found = {}
    for team in settings.teams:
        with in_team(team):
            found[team] = make(_start())
    return found


def _reachable(settings: Settings) -> redis.Redis:
    """A client of the settings' Redis; a refused login stops here, an outage does not."""
    client = redis_client(settings.redis_url)
    try:
        client.ping()
    except redis.AuthenticationError:
        raise  # a password to fix, not an outage for /healthz to report
    except redis.RedisError:
        pass  # Redis down: web serves anyway and /healthz says so
    return client


def cmd_health(args: argparse.Namespace) -> int:
    from csm_router.app.web import health_url, probe

    url = args.url or health_url(load_settings())
    healthy, said = probe(url)
    print(said, end="" if said.endswith("\n") else "\n", file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


def _smtp_login(settings: Settings) -> None:
    """Log in to the relay once at start: a refused login stops the worker (exit code 2)
    instead of failing every send; a relay that is down now is waited out by the sends."""
    smtp = settings.required_smtp()

    async def login() -> None:
        async with smtp_session(smtp, timeout=10):
            pass

    try:
        asyncio.run(login())
    except aiosmtplib.SMTPAuthenticationError:
        raise RefusedError(f"the SMTP relay refused the login for {smtp.username}: check the "
                           "user and password in ROUTER_SMTP_URL") from None
    except PermanentError as exc:  # e.g. no STARTTLS where it is required
        raise RefusedError(str(exc)) from None
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        log.warning("SMTP %s:%s is unreachable now (%s): sends wait for it",
                    smtp.host, smtp.port, exc)


def cmd_sweep(args: argparse.Namespace) -> int:
    now = _parse_until(args.at, "--at") if args.at else time.time()
    rt = _runtime()
    _setup_logging(rt.settings)
    jobs.configure(rt)
    out.print(jobs.sla_sweep(now))
    return 0


# The packages of the `demo` extra: a production install does without them.
DEMO_PACKAGES = ("pymap", "fakeredis")
DEMO_MISSING = ("the demo needs its embedded servers: pip install 'csm-router[demo]' "
                "(./scripts/demo does this)")


def cmd_demo(args: argparse.Namespace) -> int:
    # Imported here, not at the top: only the demo needs its embedded servers.
    try:
        from csm_router.demo.run import run_demo
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in DEMO_PACKAGES:
            raise
        print(f"csm-router: {DEMO_MISSING}", file=sys.stderr)
        return 1
    return run_demo(keep_running=args.keep_running)
