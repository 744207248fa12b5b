"""A technical request goes to Support; which words and patterns matched is the reason."""

from __future__ import annotations

from csm_router.core.classify import classify
from csm_router.core.decision import Decision, Snapshot
from csm_router.core.message import Inbound

NAME = "technical"


def check(msg: Inbound, snap: Snapshot) -> Decision | None:
    if snap.support_address is None or snap.support_rules is None:
        return None
    result = classify(msg, snap.support_rules)
    if not result.technical:
        return None
    return Decision.to_support(rule=NAME, why=result.explain())
