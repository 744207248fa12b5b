"""Auto-replies, bounces, list and bulk mail, and our own copies never start a thread.

A delivery report for one of our forwards is ignored here too; the router first lets it
move the forward's thread on (bounces.settle).
"""

from __future__ import annotations

import re
from email.utils import getaddresses

from csm_router.core.decision import Decision, Snapshot
from csm_router.core.message import Inbound

NAME = "automatic"

# Every message the product writes carries this header, so a copy that finds its way
# back to the alias (a CSM's forward rule, a Cc) is recognised and never loops.
OWN_HEADER = "X-CSM-Router"

# RFC 2369/2919 list headers, and ezmlm's Mailing-List: list managers' own robot replies
# often carry only one of them.
_LIST_HEADERS = (
    "List-Id", "List-Unsubscribe", "List-Subscribe", "List-Help", "List-Post", "List-Owner",
    "List-Archive", "Mailing-List",
)

_ROBOT_SENDER = re.compile(
    r"^(mailer-daemon|postmaster|no-?reply|do-?not-?reply|bounces?)([+-].*)?@", re.IGNORECASE
)


def check(msg: Inbound, snap: Snapshot) -> Decision | None:
    why = reason(msg, snap.alias)
    if why is None:
        return None
    ref = snap.thread.ref if snap.thread else None
    return Decision.ignore(rule=NAME, why=why, ref=ref)


def reason(msg: Inbound, alias: str) -> str | None:
    """Why `msg` is automatic, or None for mail a person wrote."""
    if msg.header(OWN_HEADER) is not None:
        return f"our own mail ({OWN_HEADER})"
    if msg.sender == alias:
        return "sent from the alias itself"
    if (returned := to_return_address(msg, alias)) is not None:
        return f"a delivery report to the return address {returned}"
    auto = (msg.header("Auto-Submitted") or "no").strip().lower()
    if not auto.startswith("no"):
        return f"Auto-Submitted: {auto}"  # RFC 3834
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder"):
        if msg.header(name) is not None:
            return f"{name} header"
    precedence = (msg.header("Precedence") or "").strip().lower()
    if precedence in {"bulk", "list", "junk", "auto_reply"}:
        return f"Precedence: {precedence}"
    for name in _LIST_HEADERS:
        if msg.header(name) is not None:
            return f"mailing-list or bulk mail ({name})"
    if msg.content_type == "multipart/report":
        return "delivery or read report (multipart/report)"
    return_path = msg.header("Return-Path")
    if return_path is not None and return_path.strip() in {"<>", ""}:
        return "null return path (a bounce)"
    if _ROBOT_SENDER.match(msg.sender):
        return f"robot sender {msg.sender}"
    return None


# Where a report to a forward's VERP return address (`success+b-…@acme.com`) shows it came.
RETURN_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "To")


def to_return_address(msg: Inbound, alias: str) -> str | None:
    """The return address of ours (`success+b-…`) `msg` was sent to, else None."""
    local, _, domain = alias.lower().rpartition("@")
    for name in RETURN_HEADERS:
        for _, address in getaddresses(list(msg.header_all(name))):
            found = address.strip().lower()
            if found.startswith(f"{local}+b-") and found.endswith(f"@{domain}"):
                return found
    return None
