"""Everything else: the next CSM by smooth weighted round-robin, or held if nobody can take it."""

from __future__ import annotations

from csm_router.core.decision import Decision, Snapshot
from csm_router.core.message import Inbound

NAME = "round-robin"


def check(msg: Inbound, snap: Snapshot) -> Decision:
    if snap.premium:
        return Decision.next_csm(rule=NAME, why=f"new thread from premium account "
                                 f"{msg.account}, next in the premium pool's round-robin")
    return Decision.next_csm(rule=NAME, why="new thread, next in the round-robin")
