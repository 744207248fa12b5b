"""An account still in onboarding goes to its assigned onboarding CSM."""

from __future__ import annotations

from csm_router.decision import Decision, Snapshot
from csm_router.message import Inbound

NAME = "onboarding-owner"


def check(msg: Inbound, snap: Snapshot) -> Decision | None:
    onboarding = snap.onboarding
    if onboarding is None or not onboarding.active(snap.now):
        return None
    if not snap.available(onboarding.owner):
        return None  # round-robin takes it; the owner gets the account back on return
    return Decision.to_csm(
        onboarding.owner, rule=NAME, why=f"onboarding owner of {msg.account}"
    )
