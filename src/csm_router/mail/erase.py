"""An erasure request in the alias mailbox: every message from, to or copying one person,
in the alias folder and its quarantine, expunged (`csm-router forget --mailbox`)."""

from __future__ import annotations

from email.utils import getaddresses
from typing import Any

from imapclient import DELETED

from csm_router.mail.imapfaults import NETWORK_ERRORS, transient
from csm_router.mail.mailbox import Mailbox

_FIELDS = b"FROM TO CC REPLY-TO SENDER"
_WANTED = b"BODY.PEEK[HEADER.FIELDS (" + _FIELDS + b")]"
_ANSWER = b"BODY[HEADER.FIELDS (" + _FIELDS + b")]"


def erase_person(box: Mailbox, address: str) -> dict[str, int]:
    """Expunge `address`'s mail from the connected `box` (alias folder, then quarantine);
    answers how many messages went, by folder."""
    address = address.strip().lower()
    erased: dict[str, int] = {}
    client = box.client
    try:
        for folder in (box.folder, box.quarantine_folder):
            if folder != box.folder and not client.folder_exists(folder):
                continue
            client.select_folder(folder)
            uids = _naming(client, address)
            if uids:
                client.add_flags(uids, [DELETED], silent=True)
                # UID EXPUNGE takes only these; a plain EXPUNGE any message deleted here.
                if client.has_capability("UIDPLUS"):
                    client.uid_expunge(uids)
                else:
                    client.expunge()
            erased[folder] = len(uids)
        client.select_folder(box.folder)
    except NETWORK_ERRORS as exc:
        raise transient("IMAP erasing one person's mail", exc) from None
    return erased


def _naming(client: Any, address: str) -> list[int]:
    """The messages whose address headers name `address` exactly (SEARCH matches
    substrings: `jane@globex.com` would find `mary.jane@globex.com` too)."""
    candidates = client.search(["OR", "FROM", address, "OR", "TO", address,
                                "OR", "CC", address, "HEADER", "REPLY-TO", address])
    if not candidates:
        return []
    found = []
    for uid, data in client.fetch(candidates, [_WANTED]).items():
        header = data.get(_ANSWER, b"").decode("utf-8", "replace")
        lines = header.replace("\r\n ", " ").replace("\r\n\t", " ").splitlines()
        values = [line.split(":", 1)[1] for line in lines if ":" in line]
        if any(a.lower() == address for _, a in getaddresses(values)):
            found.append(int(uid))
    return sorted(found)
