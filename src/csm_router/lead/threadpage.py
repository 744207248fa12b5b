"""`/thread/CS-n` of `csm-router web`: who had a thread and why each move, the customer's
messages with whether each one's forward went out, and the replies, read at request time.

A message's sends are found without scanning: the outbox names each entry by what makes
it unique (lua/owe.lua `owe`: kind, then a digest of the message key, the CSM and the
cause), and the message's record says which sends its decision implied (`followup`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

from markupsafe import Markup

from csm_router.config.values import language_name
from csm_router.core.threads import format_ref
from csm_router.lead.statuspage import _customer, _number, moment, relative
from csm_router.mail.outbound import when
from csm_router.state.store import Store, key, text

GENERATIONS = 3  # a dead letter owed afresh is `<id>-g2`, `<id>-g3`: the newest is shown
GENERATION = re.compile(r"-g\d+$")


def digest(value: str) -> str:
    """lua/owe.lua's `digest`: two 31-bit polynomial hashes of the bytes, in hex."""
    a, b = 7, 11
    for byte in value.encode():
        a = (a * 131 + byte) % 2147483629
        b = (b * 257 + byte) % 2147483587
    return f"{a:08x}{b:08x}"


def entry_id(kind: str, *parts: str) -> str:
    """The outbox id of the send of `kind` owed for `parts` (first generation)."""
    return f"{kind}-{digest('|'.join(parts))}"


@dataclass(frozen=True)
class Send:
    """One send owed for a message, as the page shows it."""

    what: str  # "forward to alice@acme.com", "handoff to Support"
    state: str  # "sent", "owed", "failed", "unknown"
    detail: str = ""

    def describe(self) -> str:
        return f"{self.what}: {self.state}" + (f" ({self.detail})" if self.detail else "")


def _followup(record: dict[str, str]) -> dict[str, Any]:
    try:
        followup = json.loads(record.get("followup") or "{}")
    except ValueError:
        return {}
    return followup if isinstance(followup, dict) else {}


def owed_sends(records: list[tuple[str, dict[str, str]]],
               events: Sequence[dict[str, Any]] = ()) -> dict[str, list[tuple[str, str]]]:
    """(what, first-generation entry id) of the sends owed for each message of a thread.

    A record's `followup` names what its decision owed: its own forward (no cause), and
    the held messages a CSM's reply released to them (caused by that reply). A message
    released by the sweep or a CSM freeing up went to its record's owner, with no cause
    when it was held as it came. The forwards an escalation, a release, a reassignment or
    a failed delivery owed are named by their event (`sends`: message key and entry id).
    """
    owed: dict[str, list[tuple[str, str]]] = {msgkey: [] for msgkey, _ in records}
    for event in events:
        owner, sends = str(event.get("owner") or ""), event.get("sends")
        for pair in sends if owner and isinstance(sends, list) else []:
            if isinstance(pair, list) and len(pair) == 2 and str(pair[0]) in owed:
                base = GENERATION.sub("", str(pair[1]))
                if base not in (i for _, i in owed[str(pair[0])]):
                    owed[str(pair[0])].append((f"forward to {owner}", base))
    for msgkey, record in records:
        followup = _followup(record)
        owner = str(followup.get("owner") or "")
        for other in followup.get("deliver") or [] if owner else []:
            cause = "" if other == msgkey else msgkey
            if other in owed:
                owed[other].append((f"forward to {owner}",
                                    entry_id("deliver", other, owner, cause)))
        if followup.get("support") == msgkey:
            owed[msgkey].append(("handoff to Support", entry_id("support", msgkey, "")))
    for msgkey, record in records:
        owner = record.get("owner", "")
        released = entry_id("deliver", msgkey, owner, "")
        if owner and record.get("action") == "forward" and \
                released not in (i for _, i in owed[msgkey]):
            owed[msgkey].append((f"forward to {owner}", released))
    return owed


def deliveries(store: Store, records: list[tuple[str, dict[str, str]]],
               customer: list[str], events: list[dict[str, Any]]) -> dict[str, list[Send]]:
    """For each message key in `customer`: its sends and how each stands (one round trip).

    `records` are the whole thread's: a reply's record says what it released; `events`
    its history, which names what escalations and the like owed."""
    wanted = owed_sends(records, events)
    pipe = store.redis.pipeline(transaction=False)
    for msgkey in customer:
        for _, base in wanted[msgkey]:
            for generation in range(1, GENERATIONS + 1):
                entry = base if generation == 1 else f"{base}-g{generation}"
                pipe.hmget(key("outbox", "e", entry), "state", "done", "error", "attempts")
    answers = iter(pipe.execute() if any(wanted[m] for m in customer) else [])
    zone = store.settings.report_zone
    by_key = dict(records)
    found: dict[str, list[Send]] = {}
    for msgkey in customer:
        record = by_key[msgkey]
        shown: list[Send] = []
        missing: list[Send] = []
        for what, _ in wanted[msgkey]:
            newest = None
            for _ in range(GENERATIONS):
                fields = [text(x) for x in next(answers)]
                if fields[0]:
                    newest = fields
            (shown if newest else missing).append(_send(what, newest, record, zone))
        if record.get("state") == "held":
            shown.append(Send("forward", "held", "owed to whoever can take the thread"))
        # An entry not (or no longer) kept is worth a line only when nothing else says.
        found[msgkey] = shown or missing[-1:]
    return found


def _send(what: str, fields: list[str] | None, record: dict[str, str],
          zone: tzinfo | None) -> Send:
    if fields is None:
        # Finished entries are kept a week; the record still says the forward went out.
        if record.get("state") == "delivered":
            return Send(what, "sent")
        return Send(what, "unknown", "no outbox entry kept")
    state, done, error, attempts = fields
    if state == "done":
        return Send(what, "sent", when(done, zone) if done else "")
    if state == "dead":
        return Send(what, "failed", error or "see csm-router failed")
    tries = int(attempts or 0)
    detail = f"{tries} failed attempt{'s' if tries != 1 else ''}: {error}" if tries else ""
    return Send(what, "owed", detail)


def _who(record: dict[str, str]) -> str:
    """Who wrote a message: the customer, a CSM (their reply copied to the alias), Support."""
    if record.get("rule") == "from-support":
        return "support"
    if record.get("action") in ("reply", "command"):
        return "csm"
    return "customer"


def thread_view(store: Store, ref: int, now: float) -> dict[str, Any] | None:
    """Everything `/thread/CS-n` shows, or None when there is no such thread."""
    thread = store.thread(ref)
    if not thread:
        return None
    zone = store.settings.report_zone
    events = []
    history = store.events(ref)
    for event in history:
        at = _number(event.get("at"))
        owner, previous = str(event.get("owner") or ""), str(event.get("previous") or "")
        events.append({
            "at": moment(at, zone), "ago": relative(at, now) if at is not None else "",
            "event": str(event.get("event") or ""),
            "owner": owner,
            "previous": previous if previous != owner else "",  # a move, not a stay
            "rule": str(event.get("rule") or ""), "why": str(event.get("why") or ""),
            "message_id": str(event.get("msg") or ""),
        })
    msgkeys = store.thread_messages(ref)
    # A record outlived by its thread (kept 400 days) is left out.
    records = [(m, r) for m, r in zip(msgkeys, store.messages(msgkeys), strict=True) if r]
    sends = deliveries(store, records, [m for m, r in records if _who(r) == "customer"],
                       history)
    by_who: dict[str, list[dict[str, Any]]] = {"customer": [], "csm": [], "support": []}
    for msgkey, record in records:
        at = _number(record.get("at"))
        who = _who(record)
        by_who[who].append({
            "at": moment(at, zone), "ago": relative(at, now) if at is not None else "",
            "subject": record.get("subject", ""), "owner": record.get("owner", ""),
            "rule": record.get("rule", ""), "message_id": record.get("message_id", ""),
            "sends": [{"text": s.describe(), "state": s.state}
                      for s in sends.get(msgkey, [])],
        })
    due = _number(thread.get("due"))
    facts = [
        ("customer", _customer(thread)),
        ("account", thread.get("account", "")),
        ("language", language_name(thread["language"]) if thread.get("language") else ""),
        ("owner", _owner(store, thread)),
        ("state", thread.get("state", "")),
        ("created", moment(thread.get("created"), zone)),
        ("due", Markup("{} ({})").format(moment(due, zone), relative(due, now))
         if due is not None else ""),
        ("first response", moment(thread.get("first_response"), zone)
         if thread.get("first_response") else ""),
    ]
    return {
        "now": moment(now, zone),
        "ref": format_ref(ref),
        "subject": thread.get("subject", ""),
        "facts": [(name, value or "-") for name, value in facts],
        "late": due is not None and due <= now,
        "events": events,
        "messages": by_who["customer"],
        "replies": by_who["csm"],
        "support_messages": by_who["support"],
    }


def _owner(store: Store, thread: dict[str, str]) -> str:
    """The owner as the lead reads it: Support, and the last CSM, for a thread with Support."""
    owner = thread.get("owner", "")
    if thread.get("state") != "support":
        return owner
    support = store.settings.support_address
    who = f"Support ({support.address})" if support else "Support"
    return f"{who}; last CSM {owner}" if owner else who
