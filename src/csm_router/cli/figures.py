"""The lead's figures on the command line: `status`, `report` and `digest --preview`.

Every figure is counted in the lead's days (Settings.report_zone); durations read as
people say them (`13 s`, `12 min`), while --json and --csv keep numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from rich.table import Table

from csm_router.cli import shared as cli_shared
from csm_router.cli.shared import for_json, out
from csm_router.lead import poolstatus
from csm_router.lead.statuspage import duration
from csm_router.runtime import Runtime
from csm_router.state import pool
from csm_router.terminal import inert

Add = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


def _runtime() -> Runtime:
    return cli_shared._runtime()


def cmd_status(args: argparse.Namespace) -> int:
    rt = _runtime()
    now = time.time()
    owners = poolstatus.late(rt.store.redis, rt.settings, now)
    rows = poolstatus.status(rt.store, now, owners)
    held = poolstatus.held_count(rt.store)
    held_overdue = sum(1 for t in owners.values() if not t.owner)
    failed = len(rt.outbox.dead_letters())
    pending = rt.outbox.pending()
    zone = rt.settings.report_zone
    today = poolstatus.today(rt.store, now)
    if args.json:
        print(json.dumps({"pool": [for_json(r.as_dict()) for r in rows], "held": held,
                          "held_overdue": held_overdue, "overdue_now": len(owners),
                          "outbox": pending, "failed": failed, "zone": zone.key,
                          "today": today.isoformat(),
                          "now_utc": datetime.fromtimestamp(now, UTC).isoformat(
                              timespec="seconds")}, indent=2))
        return 0
    table = Table(title=f"Pool for {rt.settings.alias}",
                  caption=f"today is {today} in {zone.key}, the lead's time zone; first "
                          "responses: each CSM's latest 1,000")
    columns = ("CSM", "on shift", "weight", "away", "open", "overdue now", "taken today",
               "median 1st response", "p90 1st response")
    for column in columns:
        table.add_column(column, justify="left" if column in ("CSM", "on shift", "away")
                         else "right", no_wrap=column == "CSM")

    for r in rows:
        away = ("until " + r.away_until if r.away_until else "yes") if r.away else ""
        away += f", backup {r.backup}" if r.backup else ""
        shift = "yes" if r.on_shift else (f"from {r.back_on_shift}" if r.back_on_shift
                                          else "no")
        table.add_row(inert(r.name or r.address), shift, str(r.weight), away, str(r.open),
                      str(r.overdue_now), str(r.taken_today),
                      duration(r.median_first_response_seconds),
                      duration(r.p90_first_response_seconds))
    out.print(table)
    out.print(f"held, waiting for a free CSM: {held}"
              + (f", {held_overdue} of them past the first-response target" if held_overdue
                 else ""))
    out.print(f"overdue now (past the first-response target, not answered): {len(owners)}")
    out.print(f"owed sends not yet out: {pending}")
    if failed:
        out.print(f"[red]sends that failed for good: {failed}[/] (see `csm-router failed`)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from csm_router.lead import report

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
    table = Table(title=f"{since} to {until - timedelta(days=1)} (days in {zone.key}, "
                        "the lead's time zone)")
    for column in ("CSM", "taken", "replies", "1st response median", "p90", "went overdue",
                   "reassigned in", "out", "to Support"):
        table.add_column(column, justify="left" if column == "CSM" else "right",
                         no_wrap=column == "CSM")

    for c in figures.csms:
        name = inert(c.name or c.address) + ("" if c.in_pool else " (left the pool)")
        table.add_row(name, str(c.taken), str(c.replies),
                      duration(c.median_first_response_seconds),
                      duration(c.p90_first_response_seconds), str(c.went_overdue),
                      str(c.reassigned_in), str(c.reassigned_out), str(c.to_support))
    out.print(table)
    if figures.departed:
        out.print("(left the pool): no longer in ROUTER_POOL, figures of the period kept")
    t = figures.threads
    out.print(f"threads that came in: {t.came_in} (to a CSM at once {t.came_in_to_csm}, "
              f"held for a free CSM {t.came_in_held}, straight to Support "
              f"{t.straight_to_support})")
    out.print(f"to Support: {t.to_support}, of which straight from the customer "
              f"{t.straight_to_support}")
    out.print(f"went overdue (escalated): {t.went_overdue}, of which held with nobody "
              f"available {t.went_overdue_held}")
    for x in figures.languages:
        out.print(f"new threads in {x.name}: {x.came_in} (to a CSM who reads it "
                  f"{x.to_a_reader}, to the whole pool {x.to_the_pool})")
    accounts = Table(title="CSMs per account")
    accounts.add_column("account")
    accounts.add_column("CSMs", justify="right")
    accounts.add_column("who")
    for a in figures.accounts:
        style = "bold red" if a.flagged else ""
        accounts.add_row(inert(a.account), str(a.touched_by), ", ".join(a.csms), style=style)
    out.print(accounts)
    if figures.flagged:
        out.print(f"[red]touched by {report.TOUCHED_FLAG} or more CSMs: "
                  f"{', '.join(inert(a.account) for a in figures.flagged)}[/]")
    return 0


def cmd_digest(args: argparse.Namespace) -> int:
    from csm_router.lead import digest

    if not args.preview:
        raise pool.PoolError("the worker sends the digest each Monday; --preview writes "
                             "it to files instead")
    rt = _runtime()
    for path in digest.write_preview(rt.store, args.week, Path(args.output)):
        print(path)
    return 0


def _parse_day(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise pool.PoolError(f"{option} {text!r}: use a date like 2026-11-23") from None


def add_figure_commands(add: Add) -> None:
    """The figure commands' parsers, added to `csm-router`'s."""
    p = add("status", cmd_status,
            "the pool: weight, away, open and overdue-now threads, taken today")
    p.add_argument("--json", action="store_true")
    p = add("report", cmd_report, "the lead's figures per CSM and per account for a period")
    p.add_argument("--since", required=True,
                   help="first day, in the lead's time zone (their ROUTER_HOURS, else UTC), "
                        "e.g. 2026-11-23")
    p.add_argument("--until", help="the day after the last (default: through today)")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true")
    shape.add_argument("--csv", action="store_true")
    p = add("digest", cmd_digest, "the lead's weekly digest: --preview writes it to files")
    p.add_argument("--preview", action="store_true",
                   help="write csm-digest-<week>.eml and .html, exactly as it would go out")
    p.add_argument("--week", help="ISO week, e.g. 2026-W49 (default: the last complete "
                                  "week in the lead's time zone)")
    p.add_argument("--output", default=".", help="folder to write to (default: here)")
