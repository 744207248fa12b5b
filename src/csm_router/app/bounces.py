"""Delivery reports that come back after the relay accepted a forward.

A forward is sent with a VERP return address (keyed.verp_address), so a report of a failure
an hour later comes back to the alias naming the forward. Such a report is treated like a
550 at the relay: the thread moves on with a note and the lead hears once
(store.undeliverable). A report that names no forward of ours, or one whose thread has
moved on already, changes nothing and says why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from email import message_from_bytes, policy
from email.message import Message
from email.parser import HeaderParser

from csm_router.config import Address
from csm_router.core.decision import Decision
from csm_router.core.message import Inbound
from csm_router.core.rules.automatic import to_return_address
from csm_router.core.threads import format_ref
from csm_router.mail.keyed import forward_id, forward_token, verp_token
from csm_router.runtime import Runtime
from csm_router.state.store import key, owed_ids, text

log = logging.getLogger(__name__)

MAX_PARTS = 50  # a report has a handful; hostile mail may nest thousands


@dataclass(frozen=True)
class Report:
    """What a delivery report says about one forward of ours."""

    token: str | None  # the forward it names (keyed.forward_token), if any
    failed: bool  # a failure, not a delay or a success notice
    error: str  # the remote server's words, shortened


def read_report(msg: Inbound, raw: bytes, alias: Address) -> Report | None:
    """The report `msg` is, or None when it is no delivery report for a forward of ours."""
    returned = to_return_address(msg, alias.address)
    is_dsn = msg.content_type == "multipart/report" and "delivery-status" in (
        (msg.header("Content-Type") or "").lower())
    if returned is None and not is_dsn:
        return None
    try:
        whole = message_from_bytes(raw, policy=policy.compat32)
        parts = list(whole.walk())[:MAX_PARTS]
    except Exception:  # hostile structure: then it names nothing
        parts = []
    fields = [f for part in parts for f in _status_fields(part)]
    token = verp_token(returned, alias) if returned else None
    token = token or _envelope_token(fields, alias) or _returned_token(parts, alias)
    actions = {f.get("Action", "").strip().lower() for f in fields} - {""}
    # A bounce without a machine-readable status (a plain-text one to the return
    # address) reports a failure; a DSN only when a recipient failed.
    failed = "failed" in actions if actions else returned is not None
    diagnostics = [f.get("Diagnostic-Code") or f.get("Status") or "" for f in fields]
    error = next((d for d in diagnostics if d), "") or msg.subject or "no reason given"
    return Report(token, failed, " ".join(error.split())[:300])


def _status_fields(part: Message) -> list[Message]:
    """The field groups of a message/delivery-status part (per message, per recipient)."""
    if part.get_content_type() != "message/delivery-status":
        return []
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    body = part.get_payload(decode=True)  # some senders leave it as text
    if not isinstance(body, bytes):
        return []
    blocks = body.decode("utf-8", "replace").replace("\r\n", "\n").split("\n\n")
    return [HeaderParser().parsestr(b) for b in blocks[:MAX_PARTS] if b.strip()]


def _envelope_token(fields: list[Message], alias: Address) -> str | None:
    for f in fields:
        envelope = f.get("Original-Envelope-Id", "").strip()
        if envelope and (token := forward_token(envelope, alias) or verp_token(envelope, alias)):
            return token
    return None


def _returned_token(parts: list[Message], alias: Address) -> str | None:
    """The forward a report returns (its Message-ID, in the attached message or headers)."""
    for part in parts:
        kind = part.get_content_type()
        if kind == "message/rfc822":
            inner = part.get_payload()
            heads = inner[0] if isinstance(inner, list) and inner else None
        elif kind == "text/rfc822-headers":
            heads = HeaderParser().parsestr(str(part.get_payload()))
        else:
            continue
        if isinstance(heads, Message):
            token = forward_token(str(heads.get("Message-ID", "")), alias)
            if token:
                return token
    return None


def settle(rt: Runtime, msg: Inbound, raw: bytes, decision: Decision) -> Decision:
    """Let a delivery report for a forward move its thread; answers `decision` (the
    automatic rule's ignore) with the report's outcome as its reason."""
    alias = rt.settings.alias
    try:
        report = read_report(msg, raw, alias)
    except Exception as exc:  # a report we cannot read changes nothing
        return replace(decision, why=f"{decision.why} (an unreadable report: "
                                     f"{type(exc).__name__})")
    if report is None:
        return decision
    why = _apply(rt, report, alias)
    log.info("delivery report %s: %s", msg.message_id, why,
             extra={"message_id": msg.message_id, "rule": decision.rule})
    return replace(decision, why=f"{decision.why}: {why}")


def _apply(rt: Runtime, report: Report, alias: Address) -> str:
    if report.token is None:
        return "it names no forward of ours, so it changes nothing"
    fwd = forward_id(report.token, alias)
    if not report.failed:
        return f"no failure reported for {fwd}, so nothing moves"
    msgkey = report.token.partition(".")[0]
    ref_raw = rt.redis.get(key("msgid", fwd))
    if ref_raw is None:
        return f"{fwd} is no forward we sent (forged, or long expired): ignored"
    ref = int(text(ref_raw))
    owner = text(rt.redis.hget(key("thread", ref), "owner") or b"")
    forwards = {text(f) for f in rt.redis.lrange(key("thread", ref, "forwards", owner), 0, -1)}
    if not owner or fwd not in forwards:
        return f"{format_ref(ref)} is no longer with the forward's recipient: nothing moves"
    out = rt.store.undeliverable("deliver", ref, owner, msgkey,
                                 f"bounced after it was accepted: {report.error}")
    rt.outbox.offer(owed_ids(out.get("owed")))
    what = f"the forward of {format_ref(ref)} to {owner} bounced"
    if not out.get("moved"):
        return f"{what}; the thread is no longer open with them, so it stays"
    return f"{what}; the thread went to {out.get('owner') or 'nobody yet (held)'}"

