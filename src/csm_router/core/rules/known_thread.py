"""A message in a known thread goes to the thread's owner; if away or gone, to the next CSM."""

from __future__ import annotations

from datetime import UTC, datetime

from csm_router.core.decision import Decision, Snapshot, ThreadInfo, ThreadState
from csm_router.core.message import Inbound

NAME = "known-thread"


def check(msg: Inbound, snap: Snapshot) -> Decision | None:
    if snap.thread is not None:
        return _to_owner(snap.thread, snap, snap.matched_by)
    if snap.tag_owner is None:
        return None
    how = "quotes the signature of"
    if snap.tag_thread is not None:
        return _to_owner(snap.tag_thread, snap, f"{how} {snap.tag_owner}")
    if snap.available(snap.tag_owner):
        if full := snap.full_why(snap.tag_owner):
            why = f"new thread that {how} {snap.tag_owner}, but {full}: next in the round-robin"
            return Decision.next_csm(rule=NAME, why=why)
        return Decision.to_csm(
            snap.tag_owner, rule=NAME, why=f"new thread that {how} {snap.tag_owner}"
        )
    return None  # the quoted CSM is away or gone: a new thread like any other


def _to_owner(thread: ThreadInfo, snap: Snapshot, matched_by: str) -> Decision:
    ref = thread.ref
    if thread.state is ThreadState.SUPPORT:
        why = f"the thread is with Support ({matched_by})"
        return Decision.to_support(rule=NAME, ref=ref, why=why)
    if thread.state is ThreadState.HELD or thread.owner is None:
        return Decision.next_csm(rule=NAME, ref=ref, why=f"held thread ({matched_by})")
    if not snap.in_pool(thread.owner):
        why = f"owner {thread.owner} has left the pool ({matched_by})"
        return Decision.next_csm(rule=NAME, ref=ref, why=why)
    if thread.owner in snap.away:
        gone = f"{thread.owner} is away"
        backup = snap.backups.get(thread.owner)
        if backup is not None and backup != thread.owner:
            if (cannot := snap.unavailable_why(backup)) is None:
                why = f"owner {gone}: {backup} covers as their backup ({matched_by})"
                return Decision.to_backup(backup, thread.owner, rule=NAME, ref=ref, why=why)
            gone = f"{gone} and their backup {cannot}"
        return Decision.next_csm(rule=NAME, ref=ref, why=f"owner {gone} ({matched_by})")
    reopened = ", reopened" if thread.state is ThreadState.CLOSED else ""
    # A closed thread left its owner's count: reopening it is a new thread for capacity. An
    # open one they hold already is never refused.
    if reopened and (full := snap.full_why(thread.owner)):
        why = f"owner of the thread, reopened, but {full}: to the next CSM ({matched_by})"
        return Decision.next_csm(rule=NAME, ref=ref, why=why)
    if thread.owner in snap.off_shift:
        back = snap.back_at.get(thread.owner)
        # Answered already: no target runs, so it waits. Reopened: a fresh clock starts.
        due = snap.due_if_started if reopened else thread.due
        until = f"off shift until {utc(back)}" if back else "off shift"
        if back is not None and (due is None or back <= due):
            why = f"owner of the thread{reopened}, {until}: it waits for them ({matched_by})"
            return Decision.to_csm(thread.owner, rule=NAME, ref=ref, why=why)
        why = (f"owner {thread.owner} is {until}, after the first-response target: to "
               f"someone on shift ({matched_by})")
        return Decision.next_csm(rule=NAME, ref=ref, why=why)
    return Decision.to_csm(
        thread.owner, rule=NAME, ref=ref, why=f"owner of the thread{reopened} ({matched_by})"
    )


def utc(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%a %H:%M UTC")
