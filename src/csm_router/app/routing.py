"""Routing one message, wherever it came from: the mailbox's router (a UID) or the MTA over
LMTP. Parse, decide, and record the decision with every send it owes, in one script."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from redis import Redis

from csm_router.app import bounces
from csm_router.core.auth import verify_sender
from csm_router.core.classify import classify
from csm_router.core.decide import decide
from csm_router.core.decision import Action, Decision
from csm_router.core.message import Inbound, MalformedMessageError, parse
from csm_router.core.rules import automatic, technical
from csm_router.core.threads import format_ref
from csm_router.runtime import Runtime, record_decision
from csm_router.state.store import message_key, text

log = logging.getLogger(__name__)

MAX_TRIES = 3  # a message that failed this often is quarantined, never tried again
TRIES_TTL = 86400  # how long its tries are remembered (and a failed message stays recognised)


def count_try(client: Redis, tries_key: str) -> tuple[int, str]:
    """Count one more try of a message before it starts; answers the tries so far and why
    the last one failed ("" if nobody said). A try that never comes back (the process
    died in it) stays counted: the message is set aside at its MAX_TRIES-th."""
    with client.pipeline() as pipe:  # one transaction: never a count without TTL
        pipe.hincrby(tries_key, "n", 1)
        pipe.hget(tries_key, "why")
        pipe.expire(tries_key, TRIES_TTL)
        tries, last, _ = pipe.execute()
    return int(tries), text(last)


@dataclass(frozen=True)
class Routed:
    """What routing one message came to.

    `state` is the record's state ("assigned", "support", ...), "duplicate" when it was
    recorded before, or "quarantine" when it must be kept aside: only the mailbox can do
    that (it copies the message to the quarantine folder), so nothing is recorded yet and
    `message_id`, `why`, `rule` and `msgkey` say what to record with it.
    """

    state: str
    owed: list[str] = field(default_factory=list)
    message_id: str = ""
    why: str = ""
    rule: str = ""
    msgkey: str | None = None
    summary: str = ""  # e.g. "CS-1042 -> alice@acme.com"


def route(rt: Runtime, raw: bytes, now: float, *, uid: int = 0, via: str = "") -> Routed:
    """Route `raw`: its decision and the sends it owes are recorded when this returns (or
    it was recorded before). Raises only for a server's trouble or a bug, never bad mail.

    `via` names where it came from in the log ("UID 42", "LMTP").
    """
    store, settings = rt.store, rt.settings
    try:
        msg = parse(raw, max_bytes=settings.max_message_bytes)
    except MalformedMessageError as exc:
        return Routed("quarantine", why=str(exc), rule=exc.reason)
    msgkey = message_key(msg, raw)
    verdict = verify_sender(msg, settings.trusted_authserv_id)
    detector = rt.languages
    language = detector.detect(f"{msg.subject}\n{msg.fresh_text}") if detector else None
    snap = store.snapshot(msg, now, verdict=verdict, support_rules=rt.support_rules,
                          msgkey=msgkey, language=language)
    if snap.recorded:
        # Whatever it implied was owed when it was recorded: the outbox finishes it.
        log.debug("%s %s already %s", via, msg.message_id, snap.recorded)
        return Routed("duplicate")
    decision = decide(msg, snap)
    if decision.rule == automatic.NAME:
        # A late delivery report for a forward moves its thread first: were the process
        # to die before the record, the next try settles it again, harmlessly.
        decision = bounces.settle(rt, msg, raw, decision)
    if decision.action is Action.QUARANTINE:
        return Routed("quarantine", message_id=msg.message_id, why=decision.why,
                      rule=decision.rule, msgkey=msgkey)
    keep = decision.action in (Action.FORWARD, Action.SUPPORT, Action.RECORD_REPLY)
    outcome = record_decision(store, msgkey, msg, decision, now, uid,
                              raw=raw if keep else None, language=language,
                              looks_technical=_looks_technical(rt, msg, decision))
    if outcome.status == "dup":
        return Routed("duplicate")
    ref = format_ref(outcome.ref) if outcome.ref else "-"
    target = outcome.owner or ("held" if outcome.state == "held" else decision.target_label)
    command = f" #{decision.command.name}" if decision.command else ""
    log.info("%s %s -> %s by %s%s (%s)", ref, msg.message_id, target, decision.rule,
             command, decision.error or decision.why,
             extra={"ref": ref, "message_id": msg.message_id, "rule": decision.rule,
                    "csm": outcome.owner or ""})
    return Routed(outcome.state, owed=list(outcome.owed), summary=f"{ref} -> {target}")


def _looks_technical(rt: Runtime, msg: Inbound, decision: Decision) -> str:
    """Why a message forwarded to a CSM reads as technical ("" if it does not): said in its
    forward, with #support to hand it over. Classified here once (the technical rule's
    reading of it, when it ran), never again by the worker."""
    if (rt.settings.support_address is None or decision.action is not Action.FORWARD
            or decision.rule == technical.NAME):
        return ""
    found = classify(msg, rt.support_rules)
    return found.explain() if found.technical else ""
