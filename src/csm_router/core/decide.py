"""decide(message, snapshot) -> Decision: the routing policy, first match wins. No I/O."""

from __future__ import annotations

from dataclasses import replace

from csm_router.core.decision import Decision, Snapshot
from csm_router.core.message import Inbound
from csm_router.core.rules import POLICY, round_robin, technical
from csm_router.core.threads import format_ref


def decide(msg: Inbound, snap: Snapshot) -> Decision:
    """Run the rules of POLICY in order and return the first decision."""
    for rule in POLICY:
        if (decision := rule.check(msg, snap)) is not None:
            decision = _onboarding_note(decision, snap)
            if snap.foreign_refs:
                refs = ", ".join(format_ref(r) for r in snap.foreign_refs)
                note = f"; it mentions {refs}, another customer's thread, which it does not join"
                decision = replace(decision, why=decision.why + note)
            return decision
    raise AssertionError("round_robin always answers")


def _onboarding_note(decision: Decision, snap: Snapshot) -> Decision:
    """A new thread of an onboarding account that its owner could not take says why: without
    it the forward reads like any account's first mail, and the owner's absence goes unseen."""
    onboarding = snap.onboarding
    if (onboarding is None or not onboarding.active(snap.now)
            or decision.rule not in (round_robin.NAME, technical.NAME)):
        return decision
    unavailable = snap.unavailable_why(onboarding.owner)
    if unavailable is None:
        return decision
    if decision.rule == technical.NAME:
        return replace(decision, why=f"{decision.why}; onboarding owner {unavailable}")
    return replace(decision, why=f"onboarding owner {unavailable}; "
                   f"{decision.why.removeprefix('new thread, ')}")
