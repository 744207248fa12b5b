"""Account affinity: a new thread from an account a CSM served lately goes back to them,
while they are available (ROUTER_AFFINITY_DAYS) and read the thread's language where
someone does (ROUTER_LANGUAGES); otherwise the round robin, saying why."""

from __future__ import annotations

from csm_router.core.decision import Decision, Snapshot
from csm_router.core.message import Inbound

NAME = "affinity"


def check(msg: Inbound, snap: Snapshot) -> Decision | None:
    if snap.affinity_days <= 0:
        return None
    window = snap.affinity_days * 86400
    # Newest first: whoever served the account last knows it best.
    recent = sorted(((at, csm) for csm, at in snap.served.items()
                     if snap.now - at <= window and snap.in_pool(csm)), reverse=True)
    if not recent:
        return None
    for at, csm in recent:
        if _cannot(snap, csm) is None:
            return Decision.to_csm(csm, rule=NAME, why=f"new thread from {msg.account}, "
                                   f"which {csm} served {_ago(snap.now - at)} ago")
    at, csm = recent[0]
    cannot = _cannot(snap, csm)
    return Decision.next_csm(rule=NAME, why=f"new thread from {msg.account}, which {csm} "
                             f"served {_ago(snap.now - at)} ago, but {cannot}: next in the "
                             "round-robin")


def _cannot(snap: Snapshot, csm: str) -> str | None:
    """Why `csm` cannot take the thread: unavailable, or, where someone in the pool reads
    the thread's language (ROUTER_LANGUAGES), not among them."""
    why = snap.unavailable_why(csm)
    readers = snap.readers.get(snap.language) if snap.language else None
    if why is None and readers and csm not in readers:
        return f"{csm} does not read {snap.language_name}"
    return why


def _ago(seconds: float) -> str:
    days = int(seconds // 86400)
    if days >= 1:
        return f"{days} day{'s' if days != 1 else ''}"
    hours = int(seconds // 3600)
    return f"{hours} hour{'s' if hours != 1 else ''}" if hours else "minutes"
