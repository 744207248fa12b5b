"""The demo's story: customers write, CSMs answer, time passes; then the figures."""

from __future__ import annotations

import logging
import time
from datetime import UTC, date, datetime, timedelta

from rich.panel import Panel

from csm_router.demo.run import ALIAS, GENUINE, Demo, body_text, compose
from csm_router.lead import poolstatus
from csm_router.lead.statuspage import duration
from csm_router.sends import jobs
from csm_router.state import pool

CUSTOMERS = [
    ("Dana Lee <dana@globex.com>", "How do I add teammates?"),
    ("Eli Park <eli@initech.io>", "Renewal options for next year"),
    ("Fay Wong <fay@umbrella.org>", "Best practice for dashboards"),
    ("Gus Hale <gus@hooli.com>", "Training session for new staff"),
    ("Hana Ito <hana@vehement.co>", "Export to CSV question"),
    ("Ivan Roy <ivan@massive.dyn>", "Can we change our plan?"),
    ("Jo King <jo@soylent.com>", "Quarterly business review"),
    ("Kai Moss <kai@wonka.biz>", "Where are the API docs?"),
]
HOUR = 3600.0


def story(demo: Demo) -> None:
    """Steps 1 to 8: mail in, decisions and mail out, as each happens."""
    out = demo.out
    out.print("\n[bold]1. The pool[/] is Alice*2, Bob and Carol (Alice takes twice as many). "
              "Each CSM pastes a signature block into their mail client; its tag lets a "
              "customer who quotes it find the same CSM again. Carol's "
              "(`csm-router signature carol@acme.com`):")
    carol_tag = pool.signature_tag(demo.store, "carol@acme.com")
    out.print(Panel(demo.signature_block("carol@acme.com").rstrip("\n"), expand=False,
                    border_style="cyan"))

    out.print("\n[bold]2. Nine customers write in.[/]")
    for sender, subject in CUSTOMERS:
        demo.send(compose(sender, subject, f"Hello,\n\n{subject}\n\nThanks!\n")[1])
    demo.send(compose("Lea Hart <lea@cyberdyne.ai>", "CSV export fails",
                      "Hi, since this morning every export returns a 500 error:\n\n"
                      "  ExportError: upstream timeout (request 7f3a)\n")[1])
    first = demo.route()
    demo.show("Smooth weighted round-robin (A B C A A B C A); the technical one goes to "
              "Support, and its customer gets a note", first)
    demo.kai_forward = next(r for r in first.sent if "kai@wonka.biz" in str(r.message["Reply-To"]))

    out.print("\n[bold]3. Alice answers Dana from her own mail client (alias copied).[/]")
    dana_fwd = next(r for r in first.sent if "dana@globex.com" in str(r.message["Reply-To"]))
    alice = dana_fwd.rcpt_tos[0]
    reply_id, raw = compose(
        f"Alice Smith <{alice}>", f"Re: {dana_fwd.message['Subject']}",
        "Hi Dana, Settings > Team > Invite. Alice\n", to="dana@globex.com", cc=ALIAS,
        in_reply_to=str(dana_fwd.message["Message-ID"]), headers=GENUINE,
    )
    demo.send(raw)
    demo.show("Nothing is forwarded back to the pool; the first-response clock stops",
              demo.route())

    out.print("\n[bold]4. Alice is away this afternoon; Dana replies to her.[/]")
    demo.away(alice, until=time.time() + 3 * HOUR)
    demo.send(compose("Dana Lee <dana@globex.com>", f"Re: {dana_fwd.message['Subject']}",
                      "Thanks! And how do I remove someone?\n", in_reply_to=reply_id)[1])
    demo.show("The thread goes to the next available CSM, with the reason", demo.route())

    out.print("\n[bold]5. Eli writes a fresh email quoting Carol's signature.[/]")
    demo.send(compose("Eli Park <eli@initech.io>", "One more thing",
                      f"Quick follow-up.\n\n> Best,\n> Carol Diaz\n> {carol_tag}\n")[1])
    demo.show("Quoted signature -> Carol", demo.route())

    out.print("\n[bold]6. newco.io is onboarding with Alice, who is still away; an "
              "auto-reply and a broken message arrive too.[/]")
    pool.assign_onboarding(demo.store, "newco.io", alice, 90, time.time())
    demo.send(compose("Nia Cole <nia@newco.io>", "Kick-off call", "When can we start?\n")[1])
    demo.send(compose("Kai Moss <kai@wonka.biz>", "Out of office", "I am away.\n",
                      headers={"Auto-Submitted": "auto-replied"})[1])
    demo.send(b"From: nobody\r\nSubject: no message id, no sender\r\n\r\nbroken\r\n")
    demo.show("Nia's thread goes round-robin and says why; the auto-reply is ignored; the "
              "broken one is quarantined (copied to the Quarantine folder)", demo.route())

    out.print("\n[bold]7. Alice is back early. Omar at newco.io starts a thread; Carol "
              "closes Eli's with a line `#close`.[/]")
    demo.back(alice)
    demo.send(compose("Omar Diaz <omar@newco.io>", "Importing our users",
                      "Can you help with the import?\n")[1])
    last = next(r for r in reversed(demo.smtp.messages)
                if "eli@initech.io" in str(r.message["Reply-To"]))
    demo.send(compose("Carol Diaz <carol@acme.com>", f"Re: {last.message['Subject']}",
                      "Hi Eli, done: see Settings > Export.\n\n#close\n", to="eli@initech.io",
                      cc=ALIAS, in_reply_to=str(last.message["Message-ID"]),
                      headers=GENUINE)[1])
    demo.show("The onboarding owner gets the account's new thread; Carol gets a "
              "confirmation", demo.route())

    out.print("\n[bold]8. An hour passes without answers[/] (`csm-router sweep --at ...`)")
    logging.getLogger("csm_router.sends.jobs").setLevel(logging.ERROR)  # one line per thread
    demo.later = 61 * 60
    out.print(jobs.sla_sweep(demo.now()))
    demo.show("Overdue threads move to the next available CSM; the lead is told once per "
              "thread", demo.route())


def lead_day(demo: Demo) -> date:
    return poolstatus.today(demo.store, demo.now())


def figures(demo: Demo) -> None:
    """Steps 9 and 10: `csm-router status` and `report` at the story's moment."""
    from csm_router.lead import report

    out, store, now = demo.out, demo.store, demo.now()
    day = lead_day(demo)
    at = datetime.fromtimestamp(now, UTC)
    out.print(f"\n[bold]9. The pool now[/] (`csm-router status`, at {at:%H:%M} UTC)")
    table = demo.table("CSM", "away", "open", "overdue now", "taken today",
                       "median 1st response")
    for row in poolstatus.status(store, now):
        table.add_row(row.name, f"until {row.away_until[11:16]}" if row.away_until else
                      ("yes" if row.away else "no"), str(row.open), str(row.overdue_now),
                      str(row.taken_today), duration(row.median_first_response_seconds))
    out.print(table)

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

    sample = demo.kai_forward
    assert sample is not None, "step 2 keeps Kai's forward"
    out.print("\n[bold]A forward as the CSM sees it:[/]")
    out.print(Panel(
        "\n".join(f"{h}: {sample.message[h]}" for h in ("From", "To", "Reply-To", "Subject"))
        + "\n\n" + body_text(sample).strip(),
        expand=False,
    ))
