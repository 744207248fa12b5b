"""Support writing to the alias: `#success` gives a thread back to the pool."""

from __future__ import annotations

from csm_router.core.commands import find_command, quoted_from_customer
from csm_router.core.decision import Action, Decision, Snapshot, ThreadState
from csm_router.core.message import Inbound

NAME = "from-support"


def check(msg: Inbound, snap: Snapshot) -> Decision | None:
    if snap.support_address is None or msg.sender != snap.support_address:
        return None
    command = find_command(msg.fresh_text)
    thread = snap.thread
    if command is None or command.name != "success":
        error = f"#{command.name} is for CSMs; Support can write #success" if command else None
        ref = thread.ref if thread else None
        return Decision.ignore(rule=NAME, ref=ref, command=command, error=error,
                               why="Support's copy on the alias")
    if thread is None:
        return Decision.ignore(
            rule=NAME, command=command, why="#success outside any known thread",
            error="no thread found: keep the [CS-1042] reference in the subject",
        )
    if command.line in snap.customer_commands:
        return Decision.ignore(rule=NAME, ref=thread.ref, command=command,
                               why="#success repeats the customer's mail",
                               error=quoted_from_customer(command.line))
    if thread.state is not ThreadState.SUPPORT:
        return Decision.ignore(
            rule=NAME, ref=thread.ref, command=command, why="#success on a thread not with Support",
            error=f"CS-{thread.ref} is not with Support (it is {thread.state.value})",
        )
    return Decision(Action.COMMAND, NAME, "Support gave the thread back to the pool",
                    thread.owner, thread.ref, command)
