"""RQ entry points, thin: load what the job names, render, send once, record."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage

import redis

from csm_router.config import PoolMember, format_duration
from csm_router.config.values import language_name
from csm_router.core.auth import reply_address
from csm_router.core.message import Inbound
from csm_router.core.threads import account_of, format_ref
from csm_router.errors import PermanentError, TransientError, UnsendableError
from csm_router.mail.keyed import id_secret, verp_address
from csm_router.mail.outbound import (
    EarlierThread,
    forward_message_id,
    mailer,
    message_id_for,
    render_forward,
    render_notice,
)
from csm_router.runtime import Runtime, release_held
from csm_router.sends import handoff, once
from csm_router.sends.context import configure as configure
from csm_router.sends.context import configured, earlier_messages, heartbeat, parse_raw, runtime
from csm_router.sends.notices import (
    escalate,
    remind,
    send_digest,
    tell_lead,
    tell_lead_of_loss,
    tell_lead_of_refusal,
)
from csm_router.sends.notices import notify_overflow as notify_overflow
from csm_router.sends.notices import owe_digest as owe_digest
from csm_router.sends.once import NotYetSafeError, Writes, send_mail_once
from csm_router.state.outbox import (
    AFTER_SEND_PATIENCE,
    JOB_MARGIN,
    SEND_SECONDS,
    Entry,
    job_timeout,
)
from csm_router.state.processes import observe_forward
from csm_router.state.store import KEEP_SECONDS, DeliveryContext, key, owed_ids

log = logging.getLogger(__name__)

def perform(*entry_ids: str) -> str:
    """The one RQ job: do each of the outbox entries it carries; answers what happened.

    An entry is taken only while the job's time left (`outbox.job_timeout`) covers a send
    and the wait after it; the rest are offered again in a job of their own.
    """
    if not configured():
        # A plain `rq worker`: no heartbeat, no pump, no claim another worker respects.
        log.error("job %s not done: csm-router's jobs run only in `csm-router worker`, not "
                  "in a plain `rq worker`; the entries are offered again", " ".join(entry_ids))
        return "refused: not a csm-router worker"
    deadline = time.monotonic() + job_timeout(len(entry_ids)) - JOB_MARGIN / 2
    done = []
    for entry_id in entry_ids:
        if time.monotonic() + SEND_SECONDS + AFTER_SEND_PATIENCE > deadline:
            done.append("left for another job")  # untaken: offered again after its lease
            continue
        done.append(perform_one(entry_id))
    return "; ".join(done)


def perform_one(entry_id: str) -> str:
    """Take outbox entry `entry_id`, do it, and record how it went.

    It never leaves the entry behind: a transient failure schedules the next attempt, a
    permanent one (or the last retry) dead-letters it and moves the thread on. If Redis
    fails while recording that, the heartbeat starts a new incarnation, so the entry,
    still held by the old one, is taken up again once the old one's key expires. Mail that
    may have gone out unrecorded (a timeout mid-send, Redis away past the wait) is never
    retried blind: the entry keeps its sending marker, which makes the next taker wait.
    """
    rt = runtime()
    beat = heartbeat()
    once.flush()  # a record Redis could not take before: this entry may be that mail
    entry = rt.outbox.take(entry_id, beat.holder, beat.same)
    if entry is None:
        return "nothing to do"
    attempt = once.begin(entry.id, beat.holder)
    try:
        try:
            result = KINDS[entry.kind](**entry.args)
        except NotYetSafeError as exc:  # a wait, not a failed attempt
            log.info("%s %s: %s: waiting", entry.kind, entry.id, exc)
            rt.outbox.later(entry.id, beat.holder, exc.delay)
            return f"waiting: {exc}"
        except PermanentError as exc:
            give_up(rt, entry, str(exc), unsendable=isinstance(exc, UnsendableError))
            return f"failed for good: {exc}"
        except Exception as exc:
            if attempt.finished or attempt.uncertain(exc):
                raise  # recorded already, or perhaps sent: no retry (see the docstring)
            if isinstance(exc, TransientError | redis.RedisError):  # a server's trouble
                log.warning("%s %s: %s (attempt %d)", entry.kind, entry.id, exc,
                            entry.attempts + 1)
            else:
                log.exception("%s %s: unexpected error", entry.kind, entry.id)
            error = str(exc) or type(exc).__name__
            if rt.outbox.retries_left(entry):
                rt.outbox.retry(entry, error)
            else:
                give_up(rt, entry, f"{error} (after {entry.attempts + 1} attempts)")
            return f"will retry: {error}"
        if not attempt.finished:  # a send finishes its entry with its own record
            rt.outbox.done(entry.id, result)
        return result
    except BaseException:
        beat.new_identity()
        raise
    finally:
        once.end()


def give_up(rt: Runtime, entry: Entry, error: str, *, unsendable: bool = False) -> None:
    """Dead-letter an entry; a forward or Support handoff moves its thread on, lead told.

    One the message's own content made `unsendable` would fail with any CSM: the message
    is quarantined instead and its thread stays put (lead told once).
    """
    args = entry.args
    if unsendable and entry.kind in ("deliver", "support"):
        _quarantine_unsendable(rt, entry, error)  # first: a repeat is harmless, a loss not
    rt.outbox.dead(entry.id, error)
    log.error("%s %s failed for good: %s", entry.kind, entry.id, error,
              extra={"entry": entry.id, "kind": entry.kind})
    if unsendable:
        return
    if entry.kind == "deliver":
        record = rt.store.message(args["msgkey"])
        if record.get("ref"):
            out = rt.store.undeliverable("deliver", int(record["ref"]), args["owner"],
                                         args["msgkey"], error)
            rt.outbox.offer(owed_ids(out.get("owed")))
    elif entry.kind == "support":
        out = rt.store.undeliverable("support", int(args["ref"]), "Support", args["msgkey"],
                                     error)
        rt.outbox.offer(owed_ids(out.get("owed")))


def _quarantine_unsendable(rt: Runtime, entry: Entry, error: str) -> None:
    msgkey = entry.args["msgkey"]
    ref = entry.args.get("ref") or rt.store.message(msgkey).get("ref") or None
    failed = entry.args.get("owner") or "Support"
    out = rt.store.run_script("unsendable", {
        "msgkey": msgkey, "ref": int(ref) if ref else None, "failed": failed,
        "error": f"cannot be sent to {failed}: {error}"})
    rt.outbox.offer(owed_ids(out.get("owed")))


def deliver(msgkey: str, owner: str, why: str = "", cause: str = "") -> str:
    """Forward one routed message to `owner`'s own inbox, once (per `cause`).

    One round trip reads what the forward needs; one, after the send, records it (and
    finishes the outbox entry that asked for it).
    """
    rt = runtime()
    settings = rt.settings
    alias = settings.alias
    message_id = forward_message_id(msgkey, owner, alias.domain, cause,
                                    secret=id_secret(rt.redis, settings, key("secret", "ids")))
    ctx = rt.store.delivery_context(msgkey, owner, message_id)
    if not ctx.record.get("ref"):
        raise PermanentError(f"message {msgkey} has no recorded thread")
    ref = int(ctx.record["ref"])
    if ctx.sent:
        return f"already sent {message_id}"
    if ctx.record.get("state") == "quarantined":
        # Its content could not be sent before; the lead was told then.
        return f"not sent: {format_ref(ref)} {msgkey} is in quarantine"
    msg = parse_raw(rt, ctx.raw, msgkey, ref)
    try:
        forward = _render_delivery(rt, msg, ctx, ref, owner, why, message_id)
    except PermanentError:
        raise
    except Exception as exc:  # the customer's content, not a server: no other CSM would do
        raise UnsendableError(f"the forward cannot be written ({type(exc).__name__}: "
                              f"{str(exc)[:200]})") from None
    once.mark(rt)  # checked not sent above, before rendering
    # A VERP return address: a report of a failure after the relay's 250 names the forward.
    mailer(settings.required_smtp()).send(forward, [owner],
                                          sender=verp_address(alias, message_id))
    # A customer waited this long for the thread's CSM; a re-forward's wait is the SLA's.
    waited = time.time() - msg.received_at if not cause and msg.received_at else None
    previous_key = key("thread", ref, "forwards", owner)
    writes = Writes([
        ["SET", key("msgid", message_id), ref, "EX", rt.settings.kept(KEEP_SECONDS)],
        ["RPUSH", previous_key, message_id],
        ["LTRIM", previous_key, -100, -1],
        ["EXPIRE", previous_key, rt.settings.retention_seconds],
        ["HSET", key("msg", msgkey), "state", "delivered"],
    ])
    if waited is not None:
        observe_forward(writes, waited)
    once.record(rt, message_id, writes)  # with the entry's end, once
    entry = once.current_entry()
    log.info("%s %s forwarded to %s as %s", format_ref(ref), msg.message_id, owner, message_id,
             extra={"ref": format_ref(ref), "message_id": msg.message_id, "csm": owner,
                    "entry": entry or ""})
    return f"sent {message_id}"


def _render_delivery(rt: Runtime, msg: Inbound, ctx: DeliveryContext, ref: int, owner: str,
                     why: str, message_id: str) -> EmailMessage:
    """The forward of `msg` to `owner`, with the thread's context."""
    settings = rt.settings
    alias = settings.alias
    thread = ctx.thread
    why = why or ctx.record.get("why", "")
    if hint := ctx.record.get("looks_technical"):
        # Classified once, by the router, when it recorded the message.
        why += f". Looks technical ({hint}): reply with #support to hand it over"
    return render_forward(
        msg,
        ref=ref,
        owner=settings.member(owner) or PoolMember(owner),
        alias=alias,
        why=why,
        message_id=message_id,
        due=datetime.fromtimestamp(float(thread["due"]), UTC) if thread.get("due") else None,
        sla_minutes=settings.first_response_minutes,
        language=language_name(thread["language"]) if thread.get("language") else "",
        # A thread recorded before its free-mail customer was one person lists no others.
        earlier=([EarlierThread(format_ref(r), *rest) for r, *rest in ctx.earlier]
                 if thread.get("account") == account_of(thread.get("customer", "")) else []),
        previous=ctx.previous,
        # Someone new to the thread reads what was said so far: nobody asks the
        # customer to repeat themselves.
        history=[] if ctx.previous else earlier_messages(rt, ctx.history),
        reply_alias=(reply_address(alias.address, secret.get_secret_value(), owner, ref)
                     if (secret := settings.reply_secret) else None),
    )


def send_notice(msgkey: str) -> str:
    """Send the confirmation or error recorded for a command in message `msgkey`."""
    rt = runtime()
    record = rt.store.message(msgkey)
    notice = json.loads(record.get("followup") or "{}").get("notice")
    if not notice:
        return "nothing to send"
    alias = rt.settings.alias
    message_id = message_id_for("notice", msgkey, domain=alias.domain)
    if not handoff.note_allowed(rt, message_id, notice["to"]):  # backscatter to a forged From
        return f"not sent: {notice['to']} had enough automatic notes today"
    reply = render_notice(
        "notice.txt.j2", sender=alias, to=[notice["to"]], subject=notice["subject"],
        message_id=message_id, in_reply_to=notice.get("in_reply_to"), text=notice["text"],
    )
    send_mail_once(rt, reply, [notice["to"]])
    return f"told {notice['to']}"


KINDS: dict[str, Callable[..., str]] = {
    "deliver": deliver,
    "support": handoff.hand_to_support,
    "support-note": handoff.support_note,
    "support-copy": handoff.support_copy,
    "notice": send_notice,
    "overflow": notify_overflow,
    "remind": remind,
    "escalate": escalate,
    "trouble": tell_lead,
    "digest": send_digest,
    "data-loss": tell_lead_of_loss,
    "login-refused": tell_lead_of_refusal,
}


def sla_sweep(now: float | None = None) -> str:
    """Remind and escalate by the first-response clock and hand out held threads.

    The scripts owe the mail they imply; offering it here only makes it go out sooner.
    """
    rt = runtime()
    now = now if now is not None else time.time()
    result = rt.store.sweep(now)
    for e in result["escalations"]:
        log.warning("CS-%s first response overdue with %s; moved to %s", e["ref"],
                    e["previous"] or "nobody", e["owner"] or "held: nobody available")
    for c in result["closed"]:
        log.info("CS-%s closed: quiet for %s (owner %s)", c["ref"],
                 format_duration(rt.settings.close_after), c["owner"] or "nobody")
    rt.outbox.offer(owed_ids(result.get("owed")))
    owe_digest(rt, now)
    released = release_held(rt)  # after closing: freed capacity takes held threads at once
    return (f"{len(result['reminders'])} reminded, {len(result['escalations'])} escalated, "
            f"{len(result['held'])} held, {len(result['closed'])} closed, "
            f"{released} released")
