"""How an IMAP server's failures are told apart: its own trouble (waited out), throttling
(waited out for as long as it asks), and a fetch that failed for its messages."""

from __future__ import annotations

import imaplib
import re
import socket
import ssl

from imapclient.exceptions import IMAPClientError

from csm_router.errors import TransientError

# A throttling server's suggested wait is honoured up to this long.
MAX_SUGGESTED_BACKOFF = 3600.0

NETWORK_ERRORS = (OSError, socket.timeout, ssl.SSLError, imaplib.IMAP4.abort, IMAPClientError)


# RFC 5530 codes (and BYE) for a server's own trouble: worth waiting out, whatever the verb;
# and Office 365's throttling ("Request is throttled. Suggested Backoff Time: ...").
SERVER_TROUBLE = ("UNAVAILABLE", "SERVERBUG", "INUSE", "LIMIT", "BYE", "THROTTLED")
_SUGGESTED_BACKOFF = re.compile(
    r"suggested\s+backoff\s+time\s*:?\s*(\d+(?:\.\d+)?)\s*(milli\w*|ms|s\w*)?", re.IGNORECASE)


def server_trouble(exc: Exception) -> bool:
    said = str(exc).upper()
    return any(code in said for code in SERVER_TROUBLE)


def suggested_backoff(said: str) -> float | None:
    """The seconds a throttling server asks us to wait, or None when it names no time.

    Office 365 answers "NO ... Request is throttled. Suggested Backoff Time: 12345
    milliseconds" to LOGIN, SELECT, FETCH...; a bare number is its milliseconds too.
    """
    found = _SUGGESTED_BACKOFF.search(said)
    if found is None:
        return None
    unit = (found[2] or "ms").lower()
    seconds = float(found[1]) / (1 if unit.startswith("s") else 1000)
    return min(seconds, MAX_SUGGESTED_BACKOFF)


def transient(what: str, exc: Exception) -> TransientError:
    return TransientError(f"{what}: {exc}", retry_after=suggested_backoff(str(exc)))


class FetchError(TransientError):
    """Fetching these bodies failed (the connection dropped or timed out, or the server
    said NO) where the server gave no sign of its own trouble: one of them may be why."""

    def __init__(self, uids: list[int], said: str) -> None:
        shown = ",".join(map(str, uids[:10])) + (",..." if len(uids) > 10 else "")
        super().__init__(f"IMAP fetch of UID {shown}: {said}")
        self.uids = uids


