"""A CSM's reply copied to the alias: record the response and owner, never forward it."""

from __future__ import annotations

from csm_router.decision import Decision, Snapshot
from csm_router.message import Inbound

NAME = "from-pool-csm"


def check(msg: Inbound, snap: Snapshot) -> Decision | None:
    if not snap.in_pool(msg.sender):
        return None
    if not snap.sender_verified:
        # Claims to be a CSM but is not proven to be: it steers nothing and is routed
        # like any customer mail by the rules after this one.
        return None
    if snap.thread is None:
        return Decision.ignore(
            rule=NAME, why=f"mail from CSM {msg.sender} outside any known thread"
        )
    why = "the owner answered" if snap.thread.owner == msg.sender else "another CSM answered"
    return Decision.record_reply(msg.sender, snap.thread.ref, rule=NAME, why=why)
