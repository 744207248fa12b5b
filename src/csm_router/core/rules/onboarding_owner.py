"""An account still in onboarding goes to its assigned onboarding CSM, while they have room."""

from __future__ import annotations

from csm_router.core.decision import Decision, Snapshot
from csm_router.core.message import Inbound

NAME = "onboarding-owner"


def check(msg: Inbound, snap: Snapshot) -> Decision | None:
    onboarding = snap.onboarding
    if onboarding is None or not onboarding.active(snap.now):
        return None
    if not snap.available(onboarding.owner):
        return None  # round-robin takes it; the owner gets the account back on return
    if full := snap.full_why(onboarding.owner):
        # Onboarding questions stay with CS (not Support) even when the owner is full.
        return Decision.next_csm(rule=NAME, why=f"onboarding owner of {msg.account}, but "
                                 f"{full}: next in the round-robin")
    return Decision.to_csm(
        onboarding.owner, rule=NAME, why=f"onboarding owner of {msg.account}"
    )
