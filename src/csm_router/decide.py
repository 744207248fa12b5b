"""decide(message, snapshot) -> Decision: the routing policy, first match wins. No I/O."""

from __future__ import annotations

from csm_router.decision import Decision, Snapshot
from csm_router.message import Inbound
from csm_router.rules import POLICY


def decide(msg: Inbound, snap: Snapshot) -> Decision:
    """Run the rules of POLICY in order and return the first decision."""
    for rule in POLICY:
        if (decision := rule.check(msg, snap)) is not None:
            return decision
    raise AssertionError("round_robin always answers")
