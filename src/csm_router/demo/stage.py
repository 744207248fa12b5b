"""The demo's stage: the embedded servers, the cast and the clock, and the product's own
router and worker playing on them."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

import fakeredis
from rich.console import Console
from rich.table import Table
from rq import SimpleWorker

from csm_router.app.router import Router
from csm_router.config import Settings, load_settings
from csm_router.demo.imap import EmbeddedImap
from csm_router.demo.relay import Received, RecordingSmtp
from csm_router.demo.rows import sent_rows
from csm_router.lead import poolstatus
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


def lead_day(demo: Demo) -> date:
    return poolstatus.today(demo.store, demo.now())
