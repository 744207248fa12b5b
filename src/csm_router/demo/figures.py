"""The lead's figures at the story's end: `csm-router status` and `report`, and one forward
as its CSM sees it."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta

from rich.panel import Panel

from csm_router.demo.rows import body_text
from csm_router.demo.stage import Demo, lead_day
from csm_router.lead import poolstatus, report
from csm_router.lead.statuspage import duration


def figures(demo: Demo) -> None:
    """Steps 9 and 10: `csm-router status` and `report` at the story's moment; then the
    forward kept from step 2, whole."""
    now, day = demo.now(), lead_day(demo)
    pool_now(demo, now)
    lead_figures(demo, day)
    a_forward(demo)


def pool_now(demo: Demo, now: float) -> None:
    """Step 9: `csm-router status`."""
    at = datetime.fromtimestamp(now, UTC)
    demo.out.print(f"\n[bold]9. The pool now[/] (`csm-router status`, at {at:%H:%M} UTC)")
    table = demo.table("CSM", "away", "open", "overdue now", "taken today",
                       "median 1st response")
    for row in poolstatus.status(demo.store, now):
        table.add_row(row.name, f"until {row.away_until[11:16]}" if row.away_until else
                      ("yes" if row.away else "no"), str(row.open), str(row.overdue_now),
                      str(row.taken_today), duration(row.median_first_response_seconds))
    demo.out.print(table)


def lead_figures(demo: Demo, day: date) -> None:
    """Step 10: `csm-router report` from the real today to the story's `day`."""
    out, store = demo.out, demo.store
    since = poolstatus.today(store, time.time())
    command = f"csm-router report --since {since}"
    if since != day:
        command += f" --until {day + timedelta(days=1)}"
    out.print(f"\n[bold]10. The lead's figures[/] (`{command}`; the weekly digest carries "
              "the same)")
    period = report.build(store, since, day + timedelta(days=1))
    table = demo.table("CSM", "taken", "replies", "1st response median", "went overdue",
                       "reassigned in / out")
    for c in period.csms:
        table.add_row(c.name or c.address, str(c.taken), str(c.replies),
                      duration(c.median_first_response_seconds), str(c.went_overdue),
                      f"{c.reassigned_in} / {c.reassigned_out}")
    out.print(table)
    out.print(f"`overdue now` counts threads past their first-response target and not "
              f"answered yet, with whoever holds them now (an escalated thread stays late for "
              f"its customer); `went overdue` counts targets missed in the period "
              f"({period.threads.went_overdue} today).")
    touched = ", ".join(f"{a.account} ({a.touched_by})" for a in period.accounts)
    out.print(f"CSMs per account: {touched}")


def a_forward(demo: Demo) -> None:
    """The forward to Kai's CSM, as that CSM sees it."""
    sample = demo.kai_forward
    assert sample is not None, "step 2 keeps Kai's forward"
    demo.out.print("\n[bold]A forward as the CSM sees it:[/]")
    demo.out.print(Panel(
        "\n".join(f"{h}: {sample.message[h]}" for h in ("From", "To", "Reply-To", "Subject"))
        + "\n\n" + body_text(sample).strip(),
        expand=False,
    ))
