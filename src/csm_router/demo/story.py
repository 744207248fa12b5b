"""The demo's story, steps 1 to 8: customers write, CSMs answer, time passes."""

from __future__ import annotations

import logging
import time

from rich.panel import Panel

from csm_router.demo.relay import Received
from csm_router.demo.stage import ALIAS, GENUINE, Demo, Step, compose
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
    carol_tag = the_pool(demo)
    first = customers_write(demo)
    dana_fwd = next(r for r in first.sent if "dana@globex.com" in str(r.message["Reply-To"]))
    alice = dana_fwd.rcpt_tos[0]
    reply_id = alice_answers(demo, dana_fwd)
    dana_replies_while_alice_is_away(demo, dana_fwd, reply_id)
    eli_quotes_a_signature(demo, carol_tag)
    onboarding_auto_reply_and_broken_mail(demo, alice)
    alice_back_and_carol_closes(demo, alice)
    an_hour_passes(demo)


def the_pool(demo: Demo) -> str:
    """Step 1; answers Carol's signature tag."""
    demo.out.print("\n[bold]1. The pool[/] is Alice*2, Bob and Carol (Alice takes twice as "
                   "many). Each CSM pastes a signature block into their mail client; its tag "
                   "lets a customer who quotes it find the same CSM again. Carol's "
                   "(`csm-router signature carol@acme.com`):")
    carol_tag = pool.signature_tag(demo.store, "carol@acme.com")
    demo.out.print(Panel(demo.signature_block("carol@acme.com").rstrip("\n"), expand=False,
                         border_style="cyan"))
    return carol_tag


def customers_write(demo: Demo) -> Step:
    """Step 2; answers what the router and worker did with the nine messages."""
    demo.out.print("\n[bold]2. Nine customers write in.[/]")
    for sender, subject in CUSTOMERS:
        demo.send(compose(sender, subject, f"Hello,\n\n{subject}\n\nThanks!\n")[1])
    demo.send(compose("Lea Hart <lea@cyberdyne.ai>", "CSV export fails",
                      "Hi, since this morning every export returns a 500 error:\n\n"
                      "  ExportError: upstream timeout (request 7f3a)\n")[1])
    first = demo.route()
    demo.show("Smooth weighted round-robin (A B C A A B C A); the technical one goes to "
              "Support, and its customer gets a note", first)
    demo.kai_forward = next(r for r in first.sent if "kai@wonka.biz" in str(r.message["Reply-To"]))
    return first


def alice_answers(demo: Demo, dana_fwd: Received) -> str:
    """Step 3; answers the Message-ID of Alice's reply."""
    demo.out.print("\n[bold]3. Alice answers Dana from her own mail client (alias copied).[/]")
    reply_id, raw = compose(
        f"Alice Smith <{dana_fwd.rcpt_tos[0]}>", f"Re: {dana_fwd.message['Subject']}",
        "Hi Dana, Settings > Team > Invite. Alice\n", to="dana@globex.com", cc=ALIAS,
        in_reply_to=str(dana_fwd.message["Message-ID"]), headers=GENUINE,
    )
    demo.send(raw)
    demo.show("Nothing is forwarded back to the pool; the first-response clock stops",
              demo.route())
    return reply_id


def dana_replies_while_alice_is_away(demo: Demo, dana_fwd: Received, reply_id: str) -> None:
    """Step 4."""
    demo.out.print("\n[bold]4. Alice is away this afternoon; Dana replies to her.[/]")
    demo.away(dana_fwd.rcpt_tos[0], until=time.time() + 3 * HOUR)
    demo.send(compose("Dana Lee <dana@globex.com>", f"Re: {dana_fwd.message['Subject']}",
                      "Thanks! And how do I remove someone?\n", in_reply_to=reply_id)[1])
    demo.show("The thread goes to the next available CSM, with the reason", demo.route())


def eli_quotes_a_signature(demo: Demo, carol_tag: str) -> None:
    """Step 5."""
    demo.out.print("\n[bold]5. Eli writes a fresh email quoting Carol's signature.[/]")
    demo.send(compose("Eli Park <eli@initech.io>", "One more thing",
                      f"Quick follow-up.\n\n> Best,\n> Carol Diaz\n> {carol_tag}\n")[1])
    demo.show("Quoted signature -> Carol", demo.route())


def onboarding_auto_reply_and_broken_mail(demo: Demo, alice: str) -> None:
    """Step 6."""
    demo.out.print("\n[bold]6. newco.io is onboarding with Alice, who is still away; an "
                   "auto-reply and a broken message arrive too.[/]")
    pool.assign_onboarding(demo.store, "newco.io", alice, 90, time.time())
    demo.send(compose("Nia Cole <nia@newco.io>", "Kick-off call", "When can we start?\n")[1])
    demo.send(compose("Kai Moss <kai@wonka.biz>", "Out of office", "I am away.\n",
                      headers={"Auto-Submitted": "auto-replied"})[1])
    demo.send(b"From: nobody\r\nSubject: no message id, no sender\r\n\r\nbroken\r\n")
    demo.show("Nia's thread goes round-robin and says why; the auto-reply is ignored; the "
              "broken one is quarantined (copied to the Quarantine folder)", demo.route())


def alice_back_and_carol_closes(demo: Demo, alice: str) -> None:
    """Step 7."""
    demo.out.print("\n[bold]7. Alice is back early. Omar at newco.io starts a thread; Carol "
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


def an_hour_passes(demo: Demo) -> None:
    """Step 8: the first-response targets are missed."""
    demo.out.print("\n[bold]8. An hour passes without answers[/] (`csm-router sweep --at ...`)")
    logging.getLogger("csm_router.sends.jobs").setLevel(logging.ERROR)  # one line per thread
    demo.later = 61 * 60
    demo.out.print(jobs.sla_sweep(demo.now()))
    demo.show("Overdue threads move to the next available CSM; the lead is told once per "
              "thread", demo.route())
