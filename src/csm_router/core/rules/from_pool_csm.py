"""A CSM's reply copied to the alias: record the response and owner, act on a command line."""

from __future__ import annotations

from csm_router.core.commands import CSM_COMMANDS, find_command, quoted_from_customer
from csm_router.core.decision import Decision, Snapshot, ThreadState
from csm_router.core.message import Inbound

NAME = "from-pool-csm"


def check(msg: Inbound, snap: Snapshot) -> Decision | None:
    if not snap.in_pool(msg.sender) or not snap.sender_verified:
        return None
    command = find_command(msg.fresh_text)
    error = None
    if command is not None and command.name not in CSM_COMMANDS:
        error = f"#{command.name} is for Support; CSMs can write #support, #close, #reassign"
    elif command is not None and command.line in snap.customer_commands:
        error = quoted_from_customer(command.line)
    thread = snap.thread
    if thread is None:
        return Decision.ignore(
            rule=NAME,
            why=f"mail from CSM {msg.sender} outside any known thread",
            command=command,
            error=(error or "no thread found: keep the [CS-1042] reference in the subject")
            if command
            else None,
        )
    if command is not None and error is None:
        error = _check(command.name, command.argument, snap, thread.state)
    why = "the owner answered" if thread.owner == msg.sender else "another CSM answered"
    return Decision.record_reply(
        msg.sender, thread.ref, rule=NAME, why=why, command=command, error=error
    )


def _check(name: str, argument: str, snap: Snapshot, state: ThreadState) -> str | None:
    """Why the command cannot be carried out, or None."""
    if name == "reassign":
        if not argument:
            return "#reassign needs an address: #reassign bob@acme.com"
        if not snap.in_pool(argument):
            return f"{argument} is not in the pool"
    if name == "support":
        if snap.support_address is None:
            return "no Support address is configured (ROUTER_SUPPORT_ADDRESS)"
        if state is ThreadState.SUPPORT:
            return "the thread is already with Support"
    return None
