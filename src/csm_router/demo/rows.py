"""Each mail the demo's relay took, as a row of a step's table: to whom, and why."""

from __future__ import annotations

from csm_router.core.rules.automatic import OWN_HEADER
from csm_router.demo.relay import Received

# What the mail that is not a forward is for, by its X-CSM-Router kind.
NOTICES = {
    "support_customer_note": "tells the customer that Support has it",
    "support_csm_copy": "a copy of the handoff for the thread's CSM",
    "escalation": "tells the lead, once per thread",
    "reminder": "reminds the owner before the target",
    "overflow": "tells the lead that nobody could take it",
    "trouble": "tells the lead a forward cannot be delivered",
}



def body_text(r: Received) -> str:
    part = r.message.get_body(("plain",))
    return str(part.get_content()) if part is not None else ""


def reason(r: Received) -> str:
    """Why a mail went out: the forward's own reason line, or what the notice is for."""
    body = body_text(r)
    for line in body.splitlines():
        for prefix in ("Why you: ", "Handed to Support because: "):
            if line.startswith(prefix):
                return line.removeprefix(prefix)
    kind = str(r.message.get(OWN_HEADER, "")).partition(" ")[0]
    if kind in ("command_reply", "notice"):  # a command's confirmation says what was done
        return body.strip().partition("\n")[0]
    return NOTICES.get(kind, kind or "-")


def sent_rows(sent: list[Received]) -> list[list[str]]:
    """One row per forward; notices of one kind to one recipient folded into one row."""
    rows: list[list[str]] = []
    folded: dict[tuple[str, str], tuple[int, int]] = {}  # -> (row, how many)
    for r in sent:
        to = ", ".join(r.rcpt_tos)
        kind = str(r.message.get(OWN_HEADER, "")).partition(" ")[0]
        if kind in NOTICES:
            if (to, kind) in folded:
                row, count = folded[(to, kind)]
                folded[(to, kind)] = (row, count + 1)
                continue
            folded[(to, kind)] = (len(rows), 1)
        rows.append([to, str(r.message["Subject"]), reason(r)])
    for row, count in folded.values():
        if count > 1:
            rows[row][1] += f" (and {count - 1} more like it)"
    return rows
