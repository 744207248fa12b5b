"""The pool's tuning at run time (away, back, onboarding owners), a CSM's signature, and
the delegated OAuth login: the commands an admin runs."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import time

from csm_router.cli.figures import Add
from csm_router.cli.shared import _parse_until, _runtime, _setup_logging, out
from csm_router.config import ConfigError, load_settings, parse_address
from csm_router.core.erasure import ERASED
from csm_router.core.threads import format_ref
from csm_router.mail.erase import erase_person
from csm_router.mail.keyed import id_secret
from csm_router.mail.mailbox import Mailbox
from csm_router.mail.outbound import render
from csm_router.oauth.login import login
from csm_router.runtime import release_held
from csm_router.state import pool
from csm_router.state.forget import forget, handle
from csm_router.state.keys import key

log = logging.getLogger(__name__)


def cmd_away(args: argparse.Namespace) -> int:
    rt = _runtime()
    until = _parse_until(args.until) if args.until else None
    address = pool.set_away(rt.store, args.address, until, backup=args.backup)
    covered = f"; replies in their threads go to {args.backup.lower()}" if args.backup else ""
    out.print(f"{address} is away" + (f" until {args.until}" if args.until else " until `back`")
              + covered, markup=False)
    return 0


def cmd_back(args: argparse.Namespace) -> int:
    rt = _runtime()
    address = args.address.strip().lower()
    returned = pool.set_back(rt.store, address)
    count = release_held(rt)
    said = [f"{address} is back"]
    if returned:
        said.append(f"{len(returned)} thread(s) back from their backup: "
                    + ", ".join(format_ref(ref) for ref in returned))
    if count:
        said.append(f"{count} held thread(s) handed out")
    out.print("; ".join(said), markup=False)
    return 0


def cmd_assign(args: argparse.Namespace) -> int:
    rt = _runtime()
    days = args.days if args.days is not None else rt.settings.onboarding_days
    account = pool.assign_onboarding(rt.store, args.account, args.address, days, time.time())
    out.print(f"{account} -> {args.address} for {days} days of onboarding")
    return 0


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


def cmd_forget(args: argparse.Namespace) -> int:
    rt = _runtime()
    _setup_logging(rt.settings)  # the request is logged, by its handle, never the address
    address = parse_address(args.address).address
    settings = rt.settings
    ours = {m.address for m in settings.pool} | {settings.alias.address} | {
        a.address for a in (settings.support_address, settings.overflow_address,
                            settings.digest_address) if a is not None}
    if address in ours or not address:
        raise pool.PoolError(f"{args.address} is one of ours (the pool, the alias, Support or "
                             "the lead), not a customer: forget is for a customer's request")
    done = forget(rt.store, address)
    mailbox: dict[str, int] = {}
    if args.mailbox:
        box = Mailbox(settings.required_imap(), settings.quarantine_folder, timeout=60)
        try:
            box.connect()
            mailbox = erase_person(box, address)
        finally:
            box.close()
    request = handle(address, id_secret(rt.redis, settings, key("secret", "ids")))
    log.info("forget %s: %d thread(s), %d message(s), %d send(s), %d other key(s), "
             "%d entr(ies) erased, %d mention(s) in others' records; %d message(s) expunged "
             "from the mailbox", request, len(done.threads), done.messages, done.sends,
             done.keys, done.entries, done.redacted, sum(mailbox.values()),
             extra={"request": request})
    if args.json:
        print(json.dumps(done.as_dict() | {"mailbox": mailbox if args.mailbox else None},
                         indent=2))
        return 0
    say = functools.partial(out.print, markup=False, highlight=False)
    say(f"forgot {address} (logged as request {request}):")
    say("  threads erased: " + (", ".join(format_ref(r) for r in done.threads) or "none"))
    say(f"  messages erased: {done.messages} (their records and bytes)")
    say(f"  sends erased: {done.sends} (owed, failed or dead)")
    say(f"  other traces erased: {done.keys} key(s), {done.entries} entr(ies) in shared "
        "indexes and per-person figures")
    if done.redacted:
        say(f"  mentions in others' mail and records: {done.redacted}, each address now "
            f"{ERASED}")
    for folder, count in mailbox.items():
        say(f"  mailbox: {count} message(s) expunged from {folder}")
    say("not reachable from here, to erase by hand:")
    if done.forwarded_to:
        say("  the forwards in these CSMs' own inboxes: " + ", ".join(sorted(done.forwarded_to)))
    if done.handed_to_support and settings.support_address is not None:
        say(f"  Support's inbox and queue ({settings.support_address.address})")
    if not args.mailbox:
        say("  the alias mailbox and its quarantine (run again with --mailbox)")
    say("  backups of Redis and of the mail servers")
    return 0


def cmd_login(args: argparse.Namespace) -> int:
    settings = load_settings()
    oauth = settings.oauth()
    if oauth is None:
        raise ConfigError("ROUTER_OAUTH_PROVIDER", "is not set: `login` is for OAuth 2.0")
    account = login(oauth, lambda line: out.print(line, markup=False, highlight=False))
    out.print(f"logged in as {account}; the login is kept in {oauth.token_file}", markup=False)
    if oauth.user and account.lower() != oauth.user.lower():
        out.print(f"note: ROUTER_IMAP_URL names {oauth.user}: the processes log in as that "
                  "user with this login's token", markup=False)
    return 0


def add_admin_commands(add: Add) -> None:
    """The admin commands' parsers, added to `csm-router`'s."""
    p = add("away", cmd_away, "mark a CSM away: they get no new threads")
    p.add_argument("address")
    p.add_argument("--until", help="date or time (UTC unless given), e.g. 2026-12-01")
    p.add_argument("--backup", metavar="ADDRESS", help="a pool CSM who takes the replies in "
                   "their threads meanwhile; the threads come back to them when back")
    p = add("back", cmd_back, "mark a CSM back (threads a backup covered come back to them)")
    p.add_argument("address")
    p = add("assign", cmd_assign, "make a CSM the onboarding owner of a customer domain")
    p.add_argument("account", help="customer domain, e.g. customer.com; at a free-mail "
                   "provider one person's address, e.g. someone@gmail.com")
    p.add_argument("address")
    p.add_argument("--days", type=int, help="default ROUTER_ONBOARDING_DAYS")
    p = add("signature", cmd_signature, "the signature block a CSM pastes into their mail client")
    p.add_argument("address")
    p = add("forget", cmd_forget, "erase what the router keeps about one person (an "
            "erasure request)")
    p.add_argument("address", help="the customer's mail address")
    p.add_argument("--mailbox", action="store_true", help="also expunge their mail from the "
                   "alias mailbox and its quarantine folder")
    p.add_argument("--json", action="store_true")
    add("login", cmd_login, "delegated OAuth 2.0, once: device code (Microsoft) or loopback "
        "(Google); the refresh token goes to ROUTER_OAUTH_TOKEN_FILE")
