"""What the product writes into a header: safe text, bounded, every line under RFC 5322's
998 characters, whatever the customer sent."""

from __future__ import annotations

import re
from collections.abc import Sequence
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.utils import getaddresses

from csm_router.core.message import header_safe
from csm_router.errors import UnsendableError

MAX_LINE = 998  # RFC 5322 2.1.1: no header line may be longer (CRLF not counted)
MAX_SUBJECT = 200
MAX_NAME = 100
MAX_FILENAME = 150
MAX_ID = 250  # a Message-ID or Content-ID longer than this is nobody's real id
# The most one character of a header's value takes when written. ASCII: 2 (a quote or
# backslash added). Else 25: a 4-byte UTF-8 character as an encoded word of its own, with
# the space before it (" =?utf-8?q?=F0=9F=98=80?=").
_WIDEST_ASCII = 2
_WIDEST_OTHER = 25
_SPACES = re.compile(r"\s+")
_ID_TEXT = re.compile(rf"<[!-;=?-~]{{1,{MAX_ID}}}>")  # printable ASCII, no "<" or ">"


def header_text(value: str, limit: int) -> str:
    """`value` made a short, safe header text: one line of at most `limit` characters,
    cut with an ellipsis.

    The email package parses what a header is set to, decoding RFC 2047 encoded words
    again (at quadratic cost, and a decoded line break is then written as one: header
    injection), so the text is bounded first and "=?" never reaches it as such.
    """
    text = _SPACES.sub(" ", header_safe(value[: limit * 4])).strip()
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "\u2026"
    return text.replace("=?", "=\u200b?")  # a zero-width space: shown the same, never decoded


def file_name(name: str) -> str:
    """A filename for a header: safe and short, its extension kept."""
    text = header_text(name, MAX_FILENAME + 20)
    if len(text) <= MAX_FILENAME:
        return text
    stem, dot, extension = text.rpartition(".")
    if not dot or len(extension) > 10:
        return header_text(text, MAX_FILENAME)
    return header_text(stem, MAX_FILENAME - len(extension) - 1) + "." + extension


def message_ids(ids: Sequence[str]) -> list[str]:
    """The message-ids a header of ours can carry as they are; others are left out."""
    return [i for i in ids if _ID_TEXT.fullmatch(i)]


def check_lines(message: EmailMessage) -> None:
    """Raise UnsendableError if a header line of `message`, as it will be written, is over
    RFC 5322's 998 characters (relays answer 5xx to such a mail)."""
    for part in message.walk():
        for name, value in part.items():
            widest = _WIDEST_ASCII if value.isascii() else _WIDEST_OTHER
            if len(name) + 4 + widest * len(value) <= MAX_LINE:
                continue  # too short to make such a line however it is written: not folded
            folded = part.policy.fold_binary(name, value)
            if max(map(len, folded.splitlines())) > MAX_LINE:
                raise UnsendableError(f"its {name} header does not fit in {MAX_LINE} "
                                      "characters a line")


def header_address(address: str, name: str = "") -> HeaderAddress:
    username, _, domain = address.partition("@")
    return HeaderAddress(display_name=header_text(name, MAX_NAME) if name else "",
                         username=username, domain=domain)


def recipients(to: str) -> str:
    """A To header of ours, its display names made short and safe."""
    return ", ".join(str(header_address(address, name))
                     for name, address in getaddresses([to]) if address)


def content_id(content_id: str | None) -> str | None:
    """`<id>` as written, if a header of ours can carry it unchanged (the HTML names it)."""
    if not content_id:
        return None
    cid = content_id if content_id.startswith("<") else f"<{content_id}>"
    return cid if _ID_TEXT.fullmatch(cid) else None
