"""Mail that claims to come from a CSM or Support but is not authenticated steers nothing."""

from __future__ import annotations

from csm_router.core.decision import Decision, Snapshot
from csm_router.core.message import Inbound

NAME = "impersonation"


def check(msg: Inbound, snap: Snapshot) -> Decision | None:
    if snap.sender_verified:
        return None
    if snap.in_pool(msg.sender):
        who = f"CSM {msg.sender}"
    elif msg.sender == snap.support_address:
        who = f"Support ({msg.sender})"
    else:
        return None
    return Decision.quarantine(
        rule=NAME, why=f"claims to be from {who} but is not authenticated: {snap.verdict}"
    )
