"""decide(message, snapshot) -> Decision: the routing policy, first match wins. No I/O."""

from __future__ import annotations

from dataclasses import replace

from csm_router.decision import Decision, Snapshot
from csm_router.message import Inbound
from csm_router.rules import POLICY
from csm_router.threads import format_ref


def decide(msg: Inbound, snap: Snapshot) -> Decision:
    """Run the rules of POLICY in order and return the first decision."""
    for rule in POLICY:
        if (decision := rule.check(msg, snap)) is not None:
            if snap.foreign_refs:
                refs = ", ".join(format_ref(r) for r in snap.foreign_refs)
                note = f"; it mentions {refs}, another customer's thread, which it does not join"
                decision = replace(decision, why=decision.why + note)
            return decision
    raise AssertionError("round_robin always answers")
