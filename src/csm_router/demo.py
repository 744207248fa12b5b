"""`csm-router demo`: the real router and worker on embedded servers, with a story to watch."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import fakeredis
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rq import SimpleWorker

from csm_router import jobs, pool, report
from csm_router.config import Settings, load_settings
from csm_router.dispatch import Runtime
from csm_router.embedded import EmbeddedImap, Received, RecordingSmtp
from csm_router.mailbox import Mailbox
from csm_router.outbox import QUEUES
from csm_router.router import Router

ALIAS = "success@acme.com"
PASSWORD = "demo-password"
AUTHSERV = "mx.acme.com"
# What Acme's receiving server writes above genuine mail from its own staff (RFC 8601):
# without it a CSM's reply would be quarantined as a claim nobody proved.
GENUINE = {"Authentication-Results": f"{AUTHSERV}; spf=pass smtp.mailfrom=acme.com; "
           "dkim=pass header.d=acme.com; dmarc=pass header.from=acme.com"}
console = Console(highlight=False)


def compose(
    sender: str,
    subject: str,
    body: str,
    *,
    to: str = ALIAS,
    cc: str | None = None,
    in_reply_to: str | None = None,
    references: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[str, bytes]:
    """A message as a mail client writes it; answers (Message-ID, bytes)."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.now(UTC))
    message_id = make_msgid(domain=sender.rpartition("@")[2].strip(">"))
    msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = references or in_reply_to
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    return message_id, msg.as_bytes()


class Demo:
    """Embedded IMAP, SMTP and Redis, and the product's own router and worker."""

    def __init__(self, imap: EmbeddedImap, smtp: RecordingSmtp) -> None:
        self.imap, self.smtp = imap, smtp
        self.settings: Settings = load_settings(
            imap_url=imap.url,
            smtp_url=smtp.url,
            redis_url="redis://embedded/0",
            alias=f"Acme Customer Success <{ALIAS}>",
            pool="Alice Smith <alice@acme.com>*2, Bob Jones <bob@acme.com>, "
            "Carol Diaz <carol@acme.com>",
            away="",
            max_open_per_csm=0,
            poll_seconds=1,
            support_address="Acme Support <support@acme.com>",
            overflow_address="CS Lead <cs-lead@acme.com>",
            first_response_minutes=60,
            trusted_authserv_id=AUTHSERV,
        )
        self.rt = Runtime.from_settings(self.settings, fakeredis.FakeRedis())
        jobs.configure(self.rt)
        self.router = Router(self.rt, Mailbox(self.settings.required_imap()))
        self.seen = 0

    def send(self, raw: bytes) -> None:
        self.imap.append(raw)

    def route(self) -> list[Received]:
        """Run the router until idle, then a burst worker; answer the new forwards."""
        self.router.run(exit_when_idle=True)
        worker = SimpleWorker([self.rt.queues[q] for q in QUEUES], connection=self.rt.redis)
        worker.work(burst=True, logging_level="WARNING")
        new = self.smtp.messages[self.seen :]
        self.seen = len(self.smtp.messages)
        return new

    def show(self, title: str, forwards: list[Received], limit: int = 12) -> None:
        table = Table(title=title, title_justify="left", show_lines=False)
        table.add_column("to")
        table.add_column("subject")
        table.add_column("why")
        for r in forwards[:limit]:
            why = next(
                (line.removeprefix("Why you: ") for line in _body(r).splitlines()
                 if line.startswith("Why you: ")),
                "-",
            )
            table.add_row(", ".join(r.rcpt_tos), str(r.message["Subject"]), why)
        if not forwards:
            table.add_row("-", "(nothing sent)", "")
        if len(forwards) > limit:
            table.add_row("...", f"and {len(forwards) - limit} more", "")
        console.print(table)


def _body(r: Received) -> str:
    part = r.message.get_body(("plain",))
    return str(part.get_content()) if part is not None else ""


def run_demo() -> int:
    """Tell the story; answers the exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console.print(Panel.fit(
        "csm-router demo: an embedded IMAP server holds success@acme.com, an embedded SMTP\n"
        "relay records what the worker sends, Redis is in memory. The router and worker\n"
        "are the real ones.",
        title="csm-router",
    ))
    with EmbeddedImap(ALIAS, PASSWORD) as imap, RecordingSmtp() as smtp:
        demo = Demo(imap, smtp)
        _story(demo)
    return 0


def _story(demo: Demo) -> None:
    store = demo.rt.store
    console.print("\n[bold]1. The pool[/] Alice*2, Bob, Carol. Carol's signature block:")
    console.print(pool.signature_tag(store, "carol@acme.com"), style="cyan")
    carol_tag = pool.signature_tag(store, "carol@acme.com")

    console.print("\n[bold]2. Nine customers write in.[/]")
    customers = [
        ("Dana Lee <dana@globex.com>", "How do I add teammates?"),
        ("Eli Park <eli@initech.io>", "Renewal options for next year"),
        ("Fay Wong <fay@umbrella.org>", "Best practice for dashboards"),
        ("Gus Hale <gus@hooli.com>", "Training session for new staff"),
        ("Hana Ito <hana@vehement.co>", "Export to CSV question"),
        ("Ivan Roy <ivan@massive.dyn>", "Can we change our plan?"),
        ("Jo King <jo@soylent.com>", "Quarterly business review"),
        ("Kai Moss <kai@wonka.biz>", "Where are the API docs?"),
    ]
    first_ids = {}
    for sender, subject in customers:
        mid, raw = compose(sender, subject, f"Hello,\n\n{subject}\n\nThanks!\n")
        first_ids[sender] = mid
        demo.send(raw)
    _, raw = compose("Lea Hart <lea@cyberdyne.ai>", "CSV export fails",
                   "Hi, since this morning every export returns a 500 error:\n\n"
                   "Traceback (most recent call last):\n  File \"export.py\", line 88\n"
                   "ExportError: upstream timeout\n")
    demo.send(raw)
    forwards = demo.route()
    demo.show("Smooth weighted round-robin (A B C A A B C A); the technical one goes to "
              "Support, and its customer gets a note", forwards)
    by_customer = {str(r.message["Reply-To"]).split(",")[0]: r for r in forwards}

    console.print("\n[bold]3. Alice answers Dana from her own mail client (alias copied).[/]")
    dana_fwd = next(r for r in forwards if "dana@globex.com" in str(r.message["Reply-To"]))
    owner = dana_fwd.rcpt_tos[0]
    reply_id, raw = compose(
        f"Alice Smith <{owner}>", f"Re: {dana_fwd.message['Subject']}",
        "Hi Dana, Settings > Team > Invite. Alice\n", to="dana@globex.com", cc=ALIAS,
        in_reply_to=str(dana_fwd.message["Message-ID"]), headers=GENUINE,
    )
    demo.send(raw)
    demo.show("Nothing is forwarded back to the pool", demo.route())

    console.print("\n[bold]4. Dana replies to Alice; Alice is away today.[/]")
    pool.set_away(store, owner)
    _, raw = compose("Dana Lee <dana@globex.com>", f"Re: {dana_fwd.message['Subject']}",
                   "Thanks! And how do I remove someone?\n", in_reply_to=reply_id)
    demo.send(raw)
    demo.show("The thread goes to the next available CSM, with the reason", demo.route())
    pool.set_back(store, owner)

    console.print("\n[bold]5. Eli writes a fresh email quoting Carol's signature.[/]")
    _, raw = compose("Eli Park <eli@initech.io>", "One more thing",
                   f"Quick follow-up.\n\n> Best,\n> Carol Diaz\n> {carol_tag}\n")
    demo.send(raw)
    demo.show("Quoted signature -> Carol", demo.route())

    console.print("\n[bold]6. newco.io is onboarding with Bob; an auto-reply and a broken "
                  "message arrive too.[/]")
    pool.assign_onboarding(store, "newco.io", "bob@acme.com", 90, time.time())
    _, raw = compose("Nia Cole <nia@newco.io>", "Kick-off call", "When can we start?\n")
    demo.send(raw)
    _, raw = compose("Kai Moss <kai@wonka.biz>", "Out of office", "I am away.\n",
                   headers={"Auto-Submitted": "auto-replied"})
    demo.send(raw)
    demo.send(b"From: nobody\r\nSubject: no message id, no sender\r\n\r\nbroken\r\n")
    demo.show("Onboarding owner gets it; the auto-reply is ignored; the broken one is "
              "quarantined", demo.route())

    console.print("\n[bold]7. Carol closes Eli's new thread with a line `#close`.[/]")
    carols = [r for r in demo.smtp.messages if r.rcpt_tos == ["carol@acme.com"]]
    last = carols[-1]
    _, raw = compose("Carol Diaz <carol@acme.com>", f"Re: {last.message['Subject']}",
                   "Hi Eli, done: see Settings > Export.\n\n#close\n", to="eli@initech.io",
                   cc=ALIAS, in_reply_to=str(last.message["Message-ID"]), headers=GENUINE)
    demo.send(raw)
    demo.show("Carol gets a confirmation", demo.route())

    console.print("\n[bold]8. An hour passes without answers[/] (`csm-router sweep --at ...`)")
    logging.getLogger("csm_router.jobs").setLevel(logging.ERROR)  # one line per thread
    print(jobs.sla_sweep(time.time() + 61 * 60))
    demo.show("Overdue threads move to the next CSM; the lead is told once per thread",
              demo.route(), limit=4)

    console.print("\n[bold]9. The pool now[/] (`csm-router status`)")
    table = Table()
    for column in ("CSM", "weight", "open", "overdue", "assigned today", "median 1st resp."):
        table.add_column(column)
    for row in pool.status(store, time.time()):
        median = row.median_first_response_minutes
        table.add_row(row.name, str(row.weight), str(row.open), str(row.overdue),
                      str(row.assigned_today), "-" if median is None else f"{median:.1f} min")
    console.print(table)

    console.print("\n[bold]10. The lead's figures[/] (`csm-router report --since TODAY`; "
                  "the same go out in Monday's digest)")
    today = datetime.now(store.settings.report_zone).date()
    figures = report.build(store, today, today + timedelta(days=2))  # the sweep was an hour on
    table = Table()
    for column in ("CSM", "taken", "replies", "1st resp. median", "overdue", "moved in / out"):
        table.add_column(column)
    for c in figures.csms:
        median = c.median_first_response_minutes
        table.add_row(c.name or c.address, str(c.taken), str(c.replies),
                      "-" if median is None else f"{median:.1f} min", str(c.overdue),
                      f"{c.reassigned_in} / {c.reassigned_out}")
    console.print(table)
    touched = ", ".join(f"{a.account} ({a.touched_by})" for a in figures.accounts)
    console.print(f"CSMs per account: {touched}")
    sample = by_customer.get("Kai Moss <kai@wonka.biz>") or forwards[-1]
    console.print("\n[bold]A forward as the CSM sees it:[/]")
    console.print(Panel(
        "\n".join(f"{h}: {sample.message[h]}" for h in ("From", "To", "Reply-To", "Subject"))
        + "\n\n" + _body(sample).strip(),
        expand=False,
    ))
