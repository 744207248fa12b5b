"""The lead's figures on the command line: `status` and `report`."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta

from rich.table import Table

from csm_router import pool
from csm_router.cli_shared import _runtime, for_json, out
from csm_router.terminal import inert

Add = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]


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


def add_figure_commands(add: Add) -> None:
    """The figure commands' parsers, added to `csm-router`'s."""
    p = add("status", cmd_status, "the pool: weight, away, open threads, assigned today")
    p.add_argument("--json", action="store_true")
    p = add("report", cmd_report, "the lead's figures per CSM and per account for a period")
    p.add_argument("--since", required=True, help="first day (UTC), e.g. 2026-11-23")
    p.add_argument("--until", help="the day after the last (default: through today)")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true")
    shape.add_argument("--csv", action="store_true")
