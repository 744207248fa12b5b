"""Notices to the CS lead (held, overdue, undeliverable threads; the weekly digest) and
reminders to CSMs whose first answer is nearly due."""

from __future__ import annotations

import logging
from datetime import date, datetime
from typing import Any

from csm_router.core.threads import format_ref
from csm_router.lead import digest
from csm_router.mail.outbound import message_id_for, render_notice, when
from csm_router.runtime import Runtime
from csm_router.sends.context import runtime
from csm_router.sends.once import send_mail_once
from csm_router.state.durability import Loss
from csm_router.state.store import owed_ids

log = logging.getLogger("csm_router.sends.jobs")  # the jobs' logger, as before: demo.py quiets it



def _to_lead(ref: int, template: str, subject: str, id_parts: tuple[object, ...],
             **context: Any) -> str:
    """A notice about thread `ref` to the lead (ROUTER_OVERFLOW_ADDRESS), sent once."""
    rt = runtime()
    settings = rt.settings
    lead = settings.overflow_address
    if lead is None:
        log.warning("%s: %s, and ROUTER_OVERFLOW_ADDRESS is not set: nobody told",
                    format_ref(ref), subject)
        return "no lead to tell"
    thread = rt.store.thread(ref)
    notice = render_notice(
        template, sender=settings.alias, to=[str(lead)],
        subject=subject.format(ref=f"[{format_ref(ref)}]", subject=thread.get("subject", "")),
        message_id=message_id_for(template.split(".")[0], ref, *id_parts,
                                  domain=settings.alias.domain),
        ref=format_ref(ref), customer=thread.get("customer", ""),
        subject_line=thread.get("subject", ""), **context,
    )
    send_mail_once(rt, notice, [lead.address])
    log.info("%s: told %s (%s)", format_ref(ref), lead.address, template.split(".")[0])
    return f"told {lead.address}"


def notify_overflow(ref: int) -> str:
    """Tell the lead that a thread is held because nobody can take it."""
    created = runtime().store.thread(ref).get("created")
    return _to_lead(ref, "overflow.txt.j2", "{ref} held: nobody in the pool can take it",
                    (created,))


def remind(ref: int, owner: str, due: float) -> str:
    """Remind a CSM that a thread's first answer is nearly due."""
    rt = runtime()
    settings = rt.settings
    thread = rt.store.thread(ref)
    lead = settings.overflow_address
    notice = render_notice(
        "reminder.txt.j2", sender=settings.alias, to=[owner],
        subject=f"Reminder: [{format_ref(ref)}] is due at {when(due)}",
        message_id=message_id_for("remind", ref, due, domain=settings.alias.domain),
        ref=format_ref(ref), customer=thread.get("customer", ""), due=when(due),
        subject_line=thread.get("subject", ""), alias=settings.alias.address,
        lead=lead.address if lead else "the CS lead",
    )
    send_mail_once(rt, notice, [owner])
    return f"reminded {owner}"


def escalate(ref: int, previous: str, owner: str, due: float) -> str:
    """Tell the lead that a thread missed its first-response target (once per due time)."""
    return _to_lead(ref, "escalation.txt.j2", "Overdue: {ref} {subject}", (due,),
                    previous=previous or "nobody", owner=owner, due=when(due))


def tell_lead(ref: int, kind: str, failed: str, error: str, moved_to: str = "") -> str:
    """Tell the lead that a forward or a Support handoff failed for good, and where the
    thread went."""
    return _to_lead(ref, "trouble.txt.j2", "Undeliverable: {ref} {subject}",
                    (kind, failed, error), what=kind, failed=failed, error=error,
                    moved_to=moved_to)


def send_digest(week: str, since: str, until: str) -> str:
    """The weekly digest to the lead: the report of [since, until), as HTML and text."""
    rt = runtime()
    to = rt.settings.lead
    if to is None:
        return "no lead to send the digest to"
    # The same composition `csm-router digest --preview` writes to a file.
    mail = digest.compose(rt.store, week, date.fromisoformat(since), date.fromisoformat(until))
    send_mail_once(rt, mail, [to.address])
    log.info("weekly digest %s sent to %s", week, to.address)
    return f"digest {week} sent to {to.address}"


def owe_digest(rt: Runtime, now: float) -> bool:
    """Owe this week's digest once it is due (Monday morning, the lead's time)."""
    due = digest.due_week(rt.settings, now)
    if due is None:
        return False
    week, since, until = due
    ends = datetime.combine(until, datetime.min.time(), rt.settings.report_zone)
    out = rt.store.run_script("digest", {"week": week, "since": since.isoformat(),
                                         "until": until.isoformat(), "now": now,
                                         "until_ts": ends.timestamp()})
    rt.outbox.offer(owed_ids(out.get("owed")))
    return True


def tell_lead_of_loss(next_ref: int, at: float, by: str, epoch: str) -> str:
    """The `data-loss` outbox kind: tell the lead (ROUTER_OVERFLOW_ADDRESS) once that
    Redis lost its data, and what that means for them."""
    rt = runtime()
    settings = rt.settings
    lead = settings.overflow_address
    if lead is None:
        return "no lead to tell"
    loss = Loss(at, next_ref, by)
    notice = render_notice(
        "data_loss.txt.j2", sender=settings.alias, to=[str(lead)],
        subject=f"Redis lost its data: new threads go on from {format_ref(next_ref)}",
        message_id=message_id_for("data-loss", epoch, domain=settings.alias.domain),
        what=loss.describe(), by=by, next_ref=format_ref(next_ref),
    )
    send_mail_once(rt, notice, [lead.address])
    log.warning("%s: told %s", loss.describe(), lead.address)
    return f"told {lead.address}"


def tell_lead_of_refusal(line: str, since: float, by: str) -> str:
    """The `login-refused` outbox kind: tell the lead once per episode that the identity
    provider refuses the mailbox's OAuth login, and why."""
    rt = runtime()
    settings = rt.settings
    lead = settings.overflow_address
    if lead is None:
        return "no lead to tell"
    notice = render_notice(
        "login_refused.txt.j2", sender=settings.alias, to=[str(lead)],
        subject=f"Mailbox login refused: {settings.alias.address}",
        message_id=message_id_for("login-refused", since, domain=settings.alias.domain),
        alias=settings.alias.address, since=when(since, settings.report_zone), line=line, by=by,
    )
    send_mail_once(rt, notice, [lead.address])
    log.warning("mailbox login refused: told %s", lead.address)
    return f"told {lead.address}"

