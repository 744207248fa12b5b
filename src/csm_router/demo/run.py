"""`csm-router demo`: the real router and worker on embedded servers, with a story to watch."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

import fakeredis
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rq import SimpleWorker

from csm_router.app.router import Router
from csm_router.config import Settings, load_settings
from csm_router.core.rules.automatic import OWN_HEADER
from csm_router.demo.imap import EmbeddedImap
from csm_router.demo.relay import Received, RecordingSmtp
from csm_router.mail.mailbox import Mailbox
from csm_router.mail.outbound import render
from csm_router.runtime import Runtime
from csm_router.sends import jobs
from csm_router.state import pool
from csm_router.state.outbox import QUEUES
from csm_router.state.store import Store, key

ALIAS = "success@acme.com"
PASSWORD = "demo-password"
AUTHSERV = "mx.acme.com"
# What Acme's receiving server writes above genuine mail from its own staff (RFC 8601):
# without it a CSM's reply would be quarantined as a claim nobody proved.
GENUINE = {"Authentication-Results": f"{AUTHSERV}; spf=pass smtp.mailfrom=acme.com; "
           "dkim=pass header.d=acme.com; dmarc=pass header.from=acme.com"}
WIDTH = 80  # the intro box and the tables are written for a terminal this wide
INTRO = (
    "csm-router demo. An embedded IMAP server holds the pooled mailbox success@acme.com, "
    "an embedded SMTP relay records everything the worker sends, and Redis is in memory. "
    "The router and the worker are the real ones; nothing leaves this machine."
)
# What the mail that is not a forward is for, by its X-CSM-Router kind.
NOTICES = {
    "support_customer_note": "tells the customer that Support has it",
    "support_csm_copy": "a copy of the handoff for the thread's CSM",
    "escalation": "tells the lead, once per thread",
    "reminder": "reminds the owner before the target",
    "overflow": "tells the lead that nobody could take it",
    "trouble": "tells the lead a forward cannot be delivered",
}


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


@dataclass
class Step:
    """What one pass of the router and worker did: the mail sent, and the decisions
    recorded for messages that sent nothing (ignored, quarantined)."""

    sent: list[Received] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def unsent(self) -> list[dict[str, Any]]:
        return [d for d in self.decisions if d.get("action") in ("ignore", "quarantine")]


class Demo:
    """Embedded IMAP, SMTP and Redis, and the product's own router and worker."""

    def __init__(self, imap: EmbeddedImap, smtp: RecordingSmtp, out: Console) -> None:
        self.imap, self.smtp, self.out = imap, smtp, out
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
        self.later = 0.0  # how far the story's clock runs ahead of the real one
        self.kai_forward: Received | None = None  # the forward shown whole at the end

    def now(self) -> float:
        return time.time() + self.later

    def table(self, *columns: str) -> Table:
        table = Table(width=min(WIDTH, self.out.width))
        for column in columns:
            table.add_column(column, justify="left" if column in ("CSM", "away") else "right")
        return table

    @property
    def store(self) -> Store:
        return self.rt.store

    def send(self, raw: bytes) -> None:
        self.imap.append(raw)

    def route(self) -> Step:
        """Run the router until idle, then a burst worker; answer what they did."""
        newest = self.rt.redis.lindex(key("recent"), 0)
        self.router.run(exit_when_idle=True)
        worker = SimpleWorker([self.rt.queues[q] for q in QUEUES], connection=self.rt.redis)
        worker.work(burst=True, logging_level="WARNING")
        sent = self.smtp.messages[self.seen :]
        self.seen = len(self.smtp.messages)
        decisions = []
        for raw in self.rt.redis.lrange(key("recent"), 0, -1):
            if raw == newest:
                break
            decisions.append(json.loads(raw))
        return Step(sent, decisions[::-1])

    def away(self, address: str, until: float | None = None) -> None:
        pool.set_away(self.store, address, until)
        end = datetime.fromtimestamp(until, UTC) if until else None
        shown = f" until {end:%H:%M} UTC" if end else ""
        option = f" --until {end:%Y-%m-%dT%H:%M}" if end else ""
        self.out.print(f"[yellow]{address} is marked away{shown}[/] "
                       f"(`csm-router away {address}{option}`): no new threads for them.")

    def back(self, address: str) -> None:
        pool.set_back(self.store, address)
        self.out.print(f"[green]{address} is marked back[/] (`csm-router back {address}`): "
                       "new threads and escalations may go to them again.")

    def signature_block(self, address: str) -> str:
        """What `csm-router signature` prints for `address`."""
        member = self.settings.member(address)
        assert member is not None
        return render(
            "signature.txt.j2",
            name=member.name or member.address,
            alias_name=self.settings.alias.name or self.settings.alias.address,
            alias=self.settings.alias.address,
            tag=pool.signature_tag(self.store, address),
        )

    def show(self, title: str, step: Step, limit: int = 12) -> None:
        """The step's mail and the messages it sent nothing for, each with its reason."""
        table = Table(title=title, title_justify="left", width=min(WIDTH, self.out.width))
        table.add_column("to", ratio=3)
        table.add_column("subject", ratio=4)
        table.add_column("why", ratio=5)
        rows = sent_rows(step.sent)
        for row in rows[:limit]:
            table.add_row(*row)
        if len(rows) > limit:
            table.add_row("...", f"and {len(rows) - limit} more", "")
        for d in step.unsent:
            outcome = "ignored" if d["action"] == "ignore" else "quarantined"
            table.add_row(f"({outcome})", d.get("subject") or "-",
                          f"{d.get('rule')}: {d.get('why')}")
        if not rows and not step.unsent:
            table.add_row("-", "(nothing sent)", "")
        self.out.print(table)


def body_text(r: Received) -> str:
    part = r.message.get_body(("plain",))
    return str(part.get_content()) if part is not None else ""


def reason(r: Received) -> str:
    """Why a mail went out: the forward's own reason line, or what the notice is for."""
    body = body_text(r)
    for line in body.splitlines():
        for prefix in ("Why you: ", "Handed to Support because: "):
            if line.startswith(prefix):
                return line.removeprefix(prefix)
    kind = str(r.message.get(OWN_HEADER, "")).partition(" ")[0]
    if kind in ("command_reply", "notice"):  # a command's confirmation says what was done
        return body.strip().partition("\n")[0]
    return NOTICES.get(kind, kind or "-")


def sent_rows(sent: list[Received]) -> list[list[str]]:
    """One row per forward; notices of one kind to one recipient folded into one row."""
    rows: list[list[str]] = []
    folded: dict[tuple[str, str], tuple[int, int]] = {}  # -> (row, how many)
    for r in sent:
        to = ", ".join(r.rcpt_tos)
        kind = str(r.message.get(OWN_HEADER, "")).partition(" ")[0]
        if kind in NOTICES:
            if (to, kind) in folded:
                row, count = folded[(to, kind)]
                folded[(to, kind)] = (row, count + 1)
                continue
            folded[(to, kind)] = (len(rows), 1)
        rows.append([to, str(r.message["Subject"]), reason(r)])
    for row, count in folded.values():
        if count > 1:
            rows[row][1] += f" (and {count - 1} more like it)"
    return rows


def intro(out: Console) -> None:
    out.print(Panel(INTRO, title="csm-router", width=min(WIDTH, out.width)))


def run_demo(*, keep_running: bool = False) -> int:
    """Tell the story on the terminal; answers the exit code."""
    tell(Console(highlight=False), keep_running=keep_running)
    return 0


def tell(out: Console, *, keep_running: bool = False, preview_folder: Path | None = None) -> Demo:
    """The whole story, told on `out`; answers the demo, its servers stopped."""
    from csm_router.demo.finale import finale
    from csm_router.demo.story import figures, story

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # fakeredis has no CONFIG GET: the warning about Redis's persistence says nothing here.
    # Each quarantined message is a row of its step's table, with the reason. Both are
    # quietened for the story only (it also runs inside other programs' processes).
    quiet = [logging.getLogger(f"csm_router.{name}") for name in ("durability", "router")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        intro(out)
        with EmbeddedImap(ALIAS, PASSWORD) as imap, RecordingSmtp() as smtp:
            demo = Demo(imap, smtp, out)
            story(demo)
            figures(demo)
            finale(demo, keep_running=keep_running, preview_folder=preview_folder)
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
    return demo
