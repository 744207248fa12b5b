"""The `check` command: the configuration, and a login to Redis, IMAP and SMTP."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable

import aiosmtplib
import redis

from csm_router.auth import authserv_note, steering_note
from csm_router.cli_shared import out
from csm_router.config import ConfigError, Settings, load_settings, redact_url
from csm_router.connect import cleartext_passwords, redis_client
from csm_router.errors import RefusedError
from csm_router.mailbox import Mailbox
from csm_router.outbound import require_templates, smtp_error, smtp_session
from csm_router.store import text
from csm_router.support import load_handler


def _exit_code(exc: Exception) -> int:
    """2 for what only a corrected setting fixes (as the processes exit), else 1."""
    configuration = (ConfigError, RefusedError, redis.AuthenticationError,
                     aiosmtplib.SMTPAuthenticationError)
    return 2 if isinstance(exc, configuration) else 1


def cmd_check(args: argparse.Namespace) -> int:
    settings = load_settings("imap_url", "smtp_url")
    code = 0

    def say(line: str) -> None:
        out.print(line, soft_wrap=True)  # one line per finding, however long

    def step(name: str, target: str, action: Callable[[], object]) -> None:
        nonlocal code
        try:
            action()
            say(f"[green]ok[/]    {name:<6} {target}")
        except Exception as exc:  # every failure is reported, none is fatal to the check
            code = max(code, _exit_code(exc))
            say(f"[red]FAIL[/]  {name:<6} {target}: {exc}")

    say(f"ok    config pool of {len(settings.pool)}, alias {settings.alias}")
    zone, why = settings.report_zone_reason()
    say(f"ok    zone   the lead's figures and digest count days in {zone.key}: {why}")
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
    override = settings.templates_dir
    step("templates", str(override or "shipped"), lambda: require_templates(override))
    return code


async def _smtp_login(settings: Settings) -> tuple[bool, str, str]:
    smtp = settings.required_smtp()
    try:
        async with smtp_session(smtp, timeout=20) as client:
            cipher = client.get_transport_info("cipher")
    except aiosmtplib.SMTPAuthenticationError as exc:
        raise RefusedError(str(smtp_error(exc, smtp))) from None
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
