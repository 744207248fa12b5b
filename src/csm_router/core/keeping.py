"""What of a message is kept in Redis for its forward: all of it up to a size, beyond that
the message without its largest attachments, each replaced by a note (the original stays
in the alias mailbox)."""

from __future__ import annotations

import logging
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser

log = logging.getLogger(__name__)

RAW_KEEP_BYTES = 5 * 1024 * 1024  # kept whole up to this; a flood of 25 MB mail is not
NOTE = ("The attachment {name} ({size}) was too large for the router to keep: it is in the "
        "customer's original message in the alias mailbox ({alias}).\n")


def kept_raw(raw: bytes, alias: str, limit: int = RAW_KEEP_BYTES) -> bytes:
    """`raw` if it is at most `limit` bytes; else the same message with its largest
    attachments replaced by a short note each, until it fits (or none is left)."""
    if len(raw) <= limit:
        return raw
    try:
        msg = BytesParser(policy=policy.default).parsebytes(raw)
        parts = sorted(_attachments(msg), key=_size, reverse=True)
        size = len(raw)
        for part in parts:
            if size <= limit:
                break
            before = _size(part)
            _replace_with_note(part, alias)
            size -= before - _size(part)
        slim = msg.as_bytes()
    except Exception as exc:  # a message the email package cannot rewrite: keep its head
        log.warning("a %s-byte message could not be slimmed (%s): kept without its body",
                    len(raw), type(exc).__name__)
        return _head_only(raw, alias)
    # Text alone over the limit (or no attachment to drop): still bounded.
    return slim if len(slim) <= limit else _head_only(raw, alias)


def _attachments(msg: Message) -> list[Message]:
    found = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype, disposition = part.get_content_type(), part.get_content_disposition()
        if (ctype in ("text/plain", "text/html") and disposition != "attachment"
                and not part.get_filename()):
            continue  # the text the CSM reads
        found.append(part)
    return found


def _size(part: Message) -> int:
    payload = part.get_payload()
    return len(payload) if isinstance(payload, str | bytes) else 0


def _replace_with_note(part: Message, alias: str) -> None:
    name = part.get_filename() or part.get_content_type()
    note = NOTE.format(name=name, size=_human(_size(part) * 3 // 4), alias=alias)
    assert isinstance(part, EmailMessage)
    part.set_content(note, disposition="attachment",
                     filename=f"{name} (in the alias mailbox).txt")


def _head_only(raw: bytes, alias: str) -> bytes:
    """The header and a note: what a CSM needs to find the message in the alias mailbox."""
    end = raw.find(b"\r\n\r\n")
    end = end if end >= 0 else raw.find(b"\n\n")
    head = raw[:end] if 0 <= end <= 256 * 1024 else b""
    kept: list[bytes] = []
    dropping = False
    for line in head.splitlines():
        if line[:1] in (b" ", b"\t"):  # a folded header goes with the one it continues
            if not dropping:
                kept.append(line)
            continue
        dropping = line.lower().startswith((b"content-", b"mime-version"))
        if not dropping:
            kept.append(line)
    note = (f"This message ({_human(len(raw))}) was too large for the router to keep: "
            f"read it in the alias mailbox ({alias}).\r\n").encode()
    return (b"\r\n".join([*kept, b"MIME-Version: 1.0",
                          b"Content-Type: text/plain; charset=utf-8", b""]) + b"\r\n" + note)


def _human(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MB" if size >= 1024 * 1024 else f"{size // 1024} KB"
