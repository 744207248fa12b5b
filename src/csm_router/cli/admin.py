"""The pool's tuning at run time (away, back, onboarding owners), a CSM's signature, and
the delegated OAuth login: the commands an admin runs."""

from __future__ import annotations

import argparse
import time

from csm_router.cli.figures import Add
from csm_router.cli.shared import _parse_until, _runtime, out
from csm_router.config import ConfigError, load_settings
from csm_router.core.threads import format_ref
from csm_router.mail.outbound import render
from csm_router.oauth.login import login
from csm_router.runtime import release_held
from csm_router.state import pool


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
    add("login", cmd_login, "delegated OAuth 2.0, once: device code (Microsoft) or loopback "
        "(Google); the refresh token goes to ROUTER_OAUTH_TOKEN_FILE")
