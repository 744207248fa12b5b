"""Everything else: the next CSM by smooth weighted round-robin, or held if nobody can take it."""

from __future__ import annotations

from csm_router.core.decision import Decision, Snapshot
from csm_router.core.message import Inbound

NAME = "round-robin"


def check(msg: Inbound, snap: Snapshot) -> Decision:
    among = _among_readers(snap)
    if snap.premium:
        return Decision.next_csm(rule=NAME, why=f"new thread from premium account "
                                 f"{msg.account}, next in the premium pool's round-robin"
                                 f"{among}")
    return Decision.next_csm(rule=NAME, why=f"new thread, next in the round-robin{among}")


def _among_readers(snap: Snapshot) -> str:
    """Who the round robin runs among, by the thread's language (record.lua picks so)."""
    if not snap.readers or not snap.language:
        return ""
    if snap.language in snap.readers:
        return f" among those who read {snap.language_name} (the thread is in it)"
    return f" (the thread is in {snap.language_name}, which nobody in the pool reads)"
