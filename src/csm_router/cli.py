"""The `csm-router` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiosmtplib
import redis
import shtab
from rich.console import Console
from rich.table import Table

from csm_router import __version__, jobs, logs, pool
from csm_router.auth import authserv_note, steering_note
from csm_router.config import ConfigError, Settings, load_settings, redact_url
from csm_router.connect import cleartext_passwords, redis_client
from csm_router.dispatch import Runtime, release_held, stop_on_signals
from csm_router.errors import PermanentError, TransientError
from csm_router.mailbox import Mailbox
from csm_router.outbound import (
    check_templates,
    event_line,
    render,
    smtp_error,
    smtp_session,
    when,
)
from csm_router.router import Router
from csm_router.store import owed_ids, text
from csm_router.support import load_handler
from csm_router.terminal import inert
from csm_router.threads import format_ref

log = logging.getLogger("csm_router")
out = Console(highlight=False)
if not out.is_terminal:
    out.width = 120  # piped into a file or a ticket: 80 columns would wrap every table


def _setup_logging(settings: Settings | None = None) -> None:
    if settings is None:
        logs.setup()
    else:
        logs.setup(settings.log_level, settings.log_format)


def _runtime() -> Runtime:
    return Runtime.from_settings(load_settings())


# -- processes --------------------------------------------------------------------------


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


def cmd_check(args: argparse.Namespace) -> int:
    settings = load_settings()
    ok = True

    def say(line: str) -> None:
        out.print(line, soft_wrap=True)  # one line per finding, however long

    def step(name: str, target: str, action: Callable[[], object]) -> None:
        nonlocal ok
        try:
            action()
            say(f"[green]ok[/]    {name:<6} {target}")
        except Exception as exc:  # every failure is reported, none is fatal to the check
            ok = False
            say(f"[red]FAIL[/]  {name:<6} {target}: {exc}")

    say(f"ok    config pool of {len(settings.pool)}, alias {settings.alias}")
    trust = steering_note(settings.trusted_authserv_id, settings.reply_secret is not None)
    say(f"{'ok  ' if settings.trusted_authserv_id else '[yellow]warn[/]'}  auth   {trust}")
    for clear in cleartext_passwords(settings):
        say(f"[yellow]warn[/]  tls    {clear}")
    warnings: list[str] = []

    def redis_check() -> None:
        client = redis_client(settings.redis_url, socket_timeout=10)
        client.ping()
        warnings.extend(redis_warnings(client))

    step("redis", redact_url(settings.redis_url), redis_check)
    for warning in warnings:
        say(f"[yellow]warn[/]  redis  {warning}")
    imap = settings.required_imap()

    notes: list[tuple[bool, str, str]] = []  # (fine, server, what), printed after its step

    def imap_login() -> None:
        box = Mailbox(imap, settings.quarantine_folder, timeout=20)
        box.connect()
        try:
            idle = box.has_idle()
            notes.append((idle, "imap", "IDLE: new mail is routed as it arrives" if idle else
                          f"no IDLE: polling every {settings.poll_seconds:g} s"))
            if box.empty():
                notes.append((True, "auth", "the alias has no mail yet: nothing to show whose "
                              "Authentication-Results the server writes"))
            else:
                fine, what = authserv_note(box.latest_header("Authentication-Results"),
                                           settings.trusted_authserv_id,
                                           settings.reply_secret is not None)
                notes.append((fine, "auth", what))
        finally:
            box.close()

    def show_notes() -> None:
        for fine, server, what in notes:
            say(f"{'ok  ' if fine else '[yellow]warn[/]'}  {server:<6} {what}")
        notes.clear()

    step("imap", str(imap), imap_login)
    show_notes()
    smtp = settings.required_smtp()
    step("smtp", str(smtp), lambda: notes.append(asyncio.run(_smtp_login(settings))))
    show_notes()
    if settings.support_address is not None:
        step("support", settings.support_handler,
             lambda: load_handler(settings.support_handler))
    if settings.templates_dir is not None:
        override = settings.templates_dir

        def templates() -> None:
            problems = check_templates(override)
            if problems:
                raise ValueError("; ".join(problems))

        step("templates", str(override), templates)
    return 0 if ok else 1


async def _smtp_login(settings: Settings) -> tuple[bool, str, str]:
    smtp = settings.required_smtp()
    try:
        async with smtp_session(smtp, timeout=20) as client:
            cipher = client.get_transport_info("cipher")
    except aiosmtplib.SMTPAuthenticationError as exc:
        raise smtp_error(exc, smtp) from None
    if cipher:
        how = "implicit TLS" if smtp.tls else "STARTTLS"
        return True, "smtp", f"{how}, {cipher[1]} {cipher[0]}"
    return False, "smtp", "no TLS: the relay is on this machine, or ROUTER_ALLOW_PLAINTEXT is set"


def redis_warnings(client: redis.Redis) -> list[str]:
    """What in Redis's own settings would lose routing state (persistence, eviction)."""
    try:
        config = {text(k): text(v) for k, v in client.config_get("*").items()}
    except redis.ResponseError:
        return ["CONFIG is not allowed here: make sure the server persists data (AOF) and "
                "does not evict keys (maxmemory-policy noeviction)"]
    found = []
    if config.get("appendonly") != "yes" and not config.get("save"):
        found.append("no persistence (appendonly no, no save points): a restart loses every "
                     "thread; set appendonly yes (deploy/redis.conf.example)")
    elif config.get("appendonly") != "yes":
        found.append("snapshots only (appendonly no): a crash loses what happened since the "
                     "last one; set appendonly yes")
    elif config.get("appendfsync") != "always":
        found.append(f"appendfsync {config.get('appendfsync')}: a crash may forget forwards "
                     "that went out, which then go out twice; set appendfsync always")
    policy = config.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        found.append(f"maxmemory-policy {policy} evicts keys csm-router needs; "
                     "set noeviction")
    return found


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


# -- admin ------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    rt = _runtime()
    rows = pool.status(rt.store, time.time())
    held = pool.held_count(rt.store)
    failed = len(rt.outbox.dead_letters())
    pending = rt.outbox.pending()
    if args.json:
        print(json.dumps({"pool": [for_json(r.as_dict()) for r in rows], "held": held,
                          "outbox": pending, "failed": failed}, indent=2))
        return 0
    table = Table(title=f"Pool for {rt.settings.alias}")
    columns = ("CSM", "on shift", "weight", "away", "open", "overdue", "assigned today",
               "median 1st response", "p90 1st response")
    for column in columns:
        table.add_column(column, justify="left" if column in ("CSM", "on shift", "away")
                         else "right", no_wrap=column == "CSM")

    for r in rows:
        away = ("until " + r.away_until if r.away_until else "yes") if r.away else ""
        shift = "yes" if r.on_shift else (f"from {r.back_on_shift}" if r.back_on_shift
                                          else "no")
        table.add_row(inert(r.name or r.address), shift, str(r.weight), away, str(r.open),
                      str(r.overdue),
                      str(r.assigned_today), _minutes(r.median_first_response_minutes),
                      _minutes(r.p90_first_response_minutes))
    out.print(table)
    out.print(f"held, waiting for a free CSM: {held}")
    out.print(f"owed sends not yet out: {pending}")
    if failed:
        out.print(f"[red]sends that failed for good: {failed}[/] (see `csm-router failed`)")
    return 0


def _minutes(value: float | None) -> str:
    return f"{value:.0f} min" if value is not None else "-"


def _parse_until(text: str) -> float:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise pool.PoolError(
            f"--until {text!r}: use a date or time like 2026-12-01 or 2026-12-01T09:00"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def cmd_report(args: argparse.Namespace) -> int:
    from csm_router import report

    rt = _runtime()
    zone = rt.settings.report_zone
    since = _parse_day(args.since, "--since")
    until = (_parse_day(args.until, "--until") if args.until
             else datetime.now(zone).date() + timedelta(days=1))
    if until <= since:
        raise pool.PoolError("--until must be after --since")
    figures = report.build(rt.store, since, until)
    if args.json:
        print(json.dumps(figures.as_dict(), indent=2))
        return 0
    if args.csv:
        print(figures.csv(), end="")
        return 0
    table = Table(title=f"{since} to {until - timedelta(days=1)} (days in {zone.key})")
    for column in ("CSM", "taken", "replies", "1st response median", "p90", "overdue",
                   "reassigned in", "out", "to Support"):
        table.add_column(column, justify="left" if column == "CSM" else "right",
                         no_wrap=column == "CSM")

    for c in figures.csms:
        table.add_row(c.name or c.address, str(c.taken), str(c.replies),
                      _minutes(c.median_first_response_minutes),
                      _minutes(c.p90_first_response_minutes), str(c.overdue),
                      str(c.reassigned_in), str(c.reassigned_out), str(c.to_support))
    out.print(table)
    accounts = Table(title="CSMs per account")
    accounts.add_column("account")
    accounts.add_column("CSMs", justify="right")
    accounts.add_column("who")
    for a in figures.accounts:
        style = "bold red" if a.flagged else ""
        accounts.add_row(a.account, str(a.touched_by), ", ".join(a.csms), style=style)
    out.print(accounts)
    if figures.flagged:
        out.print(f"[red]touched by {report.TOUCHED_FLAG} or more CSMs: "
                  f"{', '.join(a.account for a in figures.flagged)}[/]")
    return 0


def _parse_day(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise pool.PoolError(f"{option} {text!r}: use a date like 2026-11-23") from None


def cmd_away(args: argparse.Namespace) -> int:
    rt = _runtime()
    until = _parse_until(args.until) if args.until else None
    address = pool.set_away(rt.store, args.address, until)
    out.print(f"{address} is away" + (f" until {args.until}" if args.until else " until `back`"))
    return 0


def cmd_back(args: argparse.Namespace) -> int:
    rt = _runtime()
    address = pool.set_back(rt.store, args.address)
    count = release_held(rt)
    out.print(f"{address} is back" + (f"; {count} held thread(s) handed out" if count else ""))
    return 0


def cmd_assign(args: argparse.Namespace) -> int:
    rt = _runtime()
    days = args.days if args.days is not None else rt.settings.onboarding_days
    account = pool.assign_onboarding(rt.store, args.account, args.address, days, time.time())
    out.print(f"{account} -> {args.address} for {days} days of onboarding")
    return 0


_TIMES = frozenset({"created", "due", "first_response", "last_activity", "opened",
                    "overdue_at", "dead_at"})


def for_json(record: dict[str, Any]) -> dict[str, Any]:
    """One convention for every `--json`: `CS-1007`, ISO 8601 UTC times, null when unset."""
    found: dict[str, Any] = {}
    for name, value in record.items():
        if value in ("", None):
            found[name] = None
        elif name == "ref":
            found[name] = format_ref(int(value))
        elif name in _TIMES:
            found[name] = datetime.fromtimestamp(float(value), UTC).isoformat(timespec="seconds")
        elif isinstance(value, dict):
            found[name] = for_json(value)
        else:
            found[name] = value
    return found


def cmd_threads(args: argparse.Namespace) -> int:
    rt = _runtime()
    threads = pool.recent_threads(rt.store, args.limit)
    if args.json:
        print(json.dumps([for_json(t) for t in threads], indent=2))
        return 0
    table = Table(title="Threads, newest first")
    for column in ("ref", "customer", "subject", "owner", "state", "due"):
        table.add_column(column)
    for t in threads:
        due = when(t.get("due"))
        # Customer text, inert: no markup, no control characters (see terminal.py).
        table.add_row(format_ref(int(t["ref"])), inert(t.get("customer", "")),
                      inert(t.get("subject", "")), inert(t.get("owner", "") or "-"),
                      inert(t.get("state", "")), due)
    out.print(table)
    return 0



def _ref(text: str) -> int:
    digits = text.strip().strip("[]").upper().removeprefix("CS-")
    if not digits.isdigit():
        raise pool.PoolError(f"{text!r} is not a thread reference like CS-1042")
    return int(digits)


def cmd_thread(args: argparse.Namespace) -> int:
    rt = _runtime()
    ref = _ref(args.ref)
    thread = rt.store.thread(ref)
    if not thread:
        raise pool.PoolError(f"no thread {format_ref(ref)}")
    out.print(f"[bold]{inert(f'[{format_ref(ref)}]')}[/] {inert(thread.get('subject', ''))}")
    for name in ("customer", "account", "owner", "state"):
        out.print(f"  {name:<15} {inert(thread.get(name) or '-')}")
    out.print(f"  {'created':<15} {when(thread.get('created'))}")
    out.print(f"  {'due':<15} {when(thread.get('due'))}")
    out.print(f"  {'first response':<15} {when(thread.get('first_response'))}")
    out.print("history:")
    for e in rt.store.events(ref):
        out.print(f"  {inert(event_line(e))}  {inert(e.get('msg', ''))}")
    return 0


def cmd_reassign(args: argparse.Namespace) -> int:
    rt = _runtime()
    ref = _ref(args.ref)
    address = pool.require_member(rt.store, args.address)
    result = rt.store.reassign(ref, address, "reassigned by an admin")
    if result.get("error"):
        raise pool.PoolError(f"{format_ref(ref)}: {result['error']}")
    if result.get("unchanged"):
        out.print(f"{format_ref(ref)} is already with {address}: nothing to do")
        return 0
    rt.outbox.offer(owed_ids(result.get("owed")))
    out.print(f"{format_ref(ref)}: {result.get('previous') or 'nobody'} -> {address}")
    return 0


def cmd_failed(args: argparse.Namespace) -> int:
    rt = _runtime()
    outbox = rt.outbox
    if args.action == "list":
        letters = outbox.dead_letters()
        if args.json:
            print(json.dumps([for_json({"id": d.id, "kind": d.kind, "args": d.args,
                                        "attempts": d.attempts, "error": d.error,
                                        "dead_at": d.dead_at}) for d in letters], indent=2))
            return 0
        table = Table(title="Sends that failed for good")
        for column in ("id", "what", "failed at", "attempts", "error"):
            table.add_column(column, no_wrap=column == "id")
        for d in letters:
            table.add_row(inert(d.id), inert(_describe(d.kind, d.args)), when(d.dead_at),
                          str(d.attempts), inert(d.error))
        out.print(table if letters else "no failed sends")
        return 0
    if not args.id:
        raise pool.PoolError(f"`failed {args.action}` needs an id: see `csm-router failed list`")
    letter = outbox.dead_letter(args.id)
    if letter is None:
        raise pool.PoolError(f"{args.id}: no such failed send (see `csm-router failed list`)")
    if args.action == "show":
        out.print(f"[bold]{inert(letter.id)}[/]  {inert(_describe(letter.kind, letter.args))}")
        out.print(f"  {'failed at':<10} {when(letter.dead_at)} after {letter.attempts} attempts")
        out.print(f"  {'error':<10} {inert(letter.error)}")
        out.print(f"  {'args':<10} {inert(json.dumps(letter.args))}")
    elif args.action == "retry":
        outbox.revive(letter.id)
        out.print(f"{letter.id}: queued again with a fresh set of retries")
    else:
        outbox.drop(letter.id)
        out.print(f"{letter.id}: dropped")
    return 0


def _describe(kind: str, args: dict[str, Any]) -> str:
    ref = f"{format_ref(int(args['ref']))} " if args.get("ref") else ""
    if kind == "deliver":
        return f"forward of {args.get('msgkey', '')[:12]} to {args.get('owner')}"
    if kind == "support":
        return f"{ref}handoff to Support"
    return f"{ref}{kind} notice".strip()


def cmd_signature(args: argparse.Namespace) -> int:
    rt = _runtime()
    tag = pool.signature_tag(rt.store, args.address)
    member = rt.settings.member(args.address)
    assert member is not None
    print(render(
        "signature.txt.j2",
        name=member.name or member.address,
        alias_name=rt.settings.alias.name or rt.settings.alias.address,
        alias=rt.settings.alias.address,
        tag=tag,
    ), end="")
    return 0


# -- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
        return p

    p = add("run", cmd_run, "watch the alias mailbox and route each new message")
    p.add_argument("--exit-when-idle", action="store_true",
                   help="stop once nothing new is left (for batch runs and tests)")
    p = add("worker", cmd_worker, "RQ worker for the deliver, support and maintenance queues")
    p.add_argument("--burst", action="store_true", help="stop when the queues are empty")
    p.add_argument("--name", help="a stable name, unique among live workers (e.g. host-1): "
                   "on restart, what the previous worker of that name had in hand is taken "
                   "up at once instead of after its heartbeat expires")
    add("web", cmd_web, "serve /metrics, /healthz and the status page on ROUTER_WEB_ADDRESS")
    p = add("health", cmd_health, "ask `csm-router web` whether the deployment is healthy "
            "(exit 0) or not (exit 1, with the reason): for container health checks")
    p.add_argument("--url", help="default: /healthz at ROUTER_WEB_ADDRESS")
    add("check", cmd_check, "validate configuration and log in to Redis, IMAP and SMTP")
    add("demo", cmd_demo, "run the whole product on embedded servers and show what happens")
    p = add("sweep", cmd_sweep, "run one first-response sweep now (the worker runs one every 30s)")
    p.add_argument("--at", help="as if it were this time (UTC unless given), e.g. 2026-12-01T09:00")
    p = add("status", cmd_status, "the pool: weight, away, open threads, assigned today")
    p.add_argument("--json", action="store_true")
    p = add("away", cmd_away, "mark a CSM away: they get no new threads")
    p.add_argument("address")
    p.add_argument("--until", help="date or time (UTC unless given), e.g. 2026-12-01")
    p = add("back", cmd_back, "mark a CSM back")
    p.add_argument("address")
    p = add("assign", cmd_assign, "make a CSM the onboarding owner of a customer domain")
    p.add_argument("account", help="customer domain, e.g. customer.com; at a free-mail "
                   "provider one person's address, e.g. someone@gmail.com")
    p.add_argument("address")
    p.add_argument("--days", type=int, help="default ROUTER_ONBOARDING_DAYS")
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
    p = add("report", cmd_report, "the lead's figures per CSM and per account for a period")
    p.add_argument("--since", required=True, help="first day (UTC), e.g. 2026-11-23")
    p.add_argument("--until", help="the day after the last (default: through today)")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true")
    shape.add_argument("--csv", action="store_true")
    p = add("signature", cmd_signature, "the signature block a CSM pastes into their mail client")
    p.add_argument("address")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"csm-router: configuration error: {exc}", file=sys.stderr)
        return 2
    except pool.PoolError as exc:
        print(f"csm-router: {exc}", file=sys.stderr)
        return 1
    except (PermanentError, TransientError) as exc:
        print(f"csm-router: {exc}", file=sys.stderr)
        return 1
    except redis.AuthenticationError as exc:
        print(f"csm-router: Redis refused the login ({exc}): fix the password in "
              "ROUTER_REDIS_URL", file=sys.stderr)
        return 2
    except redis.ConnectionError as exc:
        print(f"csm-router: Redis unreachable ({exc}): check ROUTER_REDIS_URL and that Redis "
              "is running", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
