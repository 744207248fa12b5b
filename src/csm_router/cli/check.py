"""The `check` command: the configuration, and a login to Redis, IMAP and SMTP."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime

import aiosmtplib
import redis

from csm_router.cli.shared import out
from csm_router.config import ConfigError, ServerUrl, Settings, load_settings, redact_url
from csm_router.core.auth import authserv_note, steering_note
from csm_router.errors import RefusedError
from csm_router.mail.mailbox import Mailbox
from csm_router.mail.outbound import require_templates, smtp_error, smtp_session
from csm_router.oauth.tokens import Tokens
from csm_router.state.connect import cleartext_passwords, redis_client
from csm_router.state.store import text
from csm_router.support import load_handler


def _exit_code(exc: Exception) -> int:
    """2 for what only a corrected setting fixes (as the processes exit), else 1."""
    configuration = (ConfigError, RefusedError, redis.AuthenticationError,
                     aiosmtplib.SMTPAuthenticationError)
    return 2 if isinstance(exc, configuration) else 1


def cmd_check(args: argparse.Namespace) -> int:
    settings = load_settings("imap_url", "smtp_url")
    report = _Report()
    _settings_notes(report, settings)
    warnings: list[str] = []
    report.step("redis", redact_url(settings.redis_url),
                lambda: warnings.extend(_redis_login(settings)))
    for warning in warnings:
        report.note(False, "redis", warning)
    imap, smtp = settings.required_imap(), settings.required_smtp()
    notes: list[tuple[bool, str, str]] = []  # (fine, server, what), printed after its step
    tokens = next((url.token for url in (imap, smtp) if isinstance(url.token, Tokens)), None)
    if (oauth := settings.oauth()) is not None and tokens is not None:
        report.step("oauth", oauth.describe(), lambda: notes.append(_token_note(tokens)))
        report.notes(notes)
    report.step("imap", str(imap), lambda: _imap_login(settings, imap, notes))
    report.notes(notes)
    report.step("smtp", str(smtp), lambda: notes.append(asyncio.run(_smtp_login(settings))))
    report.notes(notes)
    if settings.support_address is not None:
        report.step("support", settings.support_handler,
                    lambda: load_handler(settings.support_handler))
    override = settings.templates_dir
    report.step("templates", str(override or "shipped"), lambda: require_templates(override))
    return report.code


class _Report:
    """The check's findings, one line each, and the exit code the worst failure sets."""

    def __init__(self) -> None:
        self.code = 0

    def say(self, line: str) -> None:
        out.print(line, soft_wrap=True)  # one line per finding, however long

    def note(self, fine: bool, server: str, what: str) -> None:
        self.say(f"{'ok  ' if fine else '[yellow]warn[/]'}  {server:<6} {what}")

    def notes(self, notes: list[tuple[bool, str, str]]) -> None:
        """Print what a step found beside its verdict, and forget it."""
        for fine, server, what in notes:
            self.note(fine, server, what)
        notes.clear()

    def step(self, name: str, target: str, action: Callable[[], object]) -> None:
        try:
            action()
            self.say(f"[green]ok[/]    {name:<6} {target}")
        except Exception as exc:  # every failure is reported, none is fatal to the check
            self.code = max(self.code, _exit_code(exc))
            self.say(f"[red]FAIL[/]  {name:<6} {target}: {exc}")


def _settings_notes(report: _Report, settings: Settings) -> None:
    """What the settings alone tell: the pool, the lead's zone, whom replies trust, TLS."""
    report.note(True, "config", f"pool of {len(settings.pool)}, alias {settings.alias}")
    zone, why = settings.report_zone_reason()
    report.note(True, "zone", f"the lead's figures and digest count days in {zone.key}: {why}")
    trust = steering_note(settings.trusted_authserv_id, settings.reply_secret is not None)
    report.note(bool(settings.trusted_authserv_id), "auth", trust)
    for clear in cleartext_passwords(settings):
        report.note(False, "tls", clear)


def _token_note(tokens: Tokens) -> tuple[bool, str, str]:
    """Get a token now; when it lapses (the processes renew it before then)."""
    tokens()
    lapses = datetime.fromtimestamp(tokens.expires_at, UTC)
    left = max(0.0, tokens.expires_at - time.time())
    return True, "oauth", (f"token granted, valid {left / 60:.0f} min (until "
                           f"{lapses:%H:%M} UTC); renewed before it lapses")


def _redis_login(settings: Settings) -> list[str]:
    """Reach Redis; what in its settings would lose routing state."""
    client = redis_client(settings.redis_url, socket_timeout=10)
    client.ping()
    return redis_warnings(client)


def _imap_login(settings: Settings, imap: ServerUrl,
                notes: list[tuple[bool, str, str]]) -> None:
    """Log in to the alias's mailbox, noting whether it pushes new mail and who signs the
    Authentication-Results in it (noted as found, so a later failure keeps what came before)."""
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
