"""Erasing one person from what others wrote: their address found as a whole address,
and replaced, in text and inside a message's encoded parts."""

from __future__ import annotations

import base64
import quopri
import re
from email import message_from_bytes
from email.policy import compat32

# What stands where an erased address stood: a reserved domain (RFC 2606), so that
# nothing is ever sent to it.
ERASED = "erased@forgotten.invalid"

# Characters that, before an address, make it part of a longer one: `ann@globex.com` is
# not in `joann@globex.com` nor `mary.ann@globex.com` (nor, by the lookahead below, in
# `ann@globex.com.au`). The rarer characters an address may hold (`=`, `'`, `/`) are
# taken as boundaries, as they are in `smtp.mailfrom=ann@globex.com` or `'ann@globex.com'`.
_LOCAL = rb"A-Za-z0-9._%+-"
_ENCODED = re.compile(rb"(?im)^content-transfer-encoding:[ \t]*(base64|quoted-printable)")


def mentions(address: str) -> re.Pattern[bytes]:
    """A pattern for `address` as a whole address, in any case."""
    exact = re.escape(address.strip().lower().encode())
    return re.compile(rb"(?<![" + _LOCAL + rb"])" + exact + rb"(?![A-Za-z0-9-]|\.[A-Za-z0-9])",
                      re.IGNORECASE)


def redact(value: bytes, pattern: re.Pattern[bytes]) -> bytes:
    """`value` with every match of `pattern` replaced by ERASED."""
    return pattern.sub(ERASED.encode(), value)


def redact_message(raw: bytes, pattern: re.Pattern[bytes]) -> bytes:
    """A whole message with every mention replaced by ERASED: in its headers and plain
    parts as bytes, and inside base64 and quoted-printable parts decoded, replaced and
    encoded again. The rest of the message is left as it was written."""
    redacted = redact(raw, pattern)
    if not _ENCODED.search(redacted):
        return redacted
    message = message_from_bytes(redacted, policy=compat32)
    changed = False
    for part in message.walk():
        encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
        if part.is_multipart() or encoding not in ("base64", "quoted-printable"):
            continue
        decoded = part.get_payload(decode=True)
        if not isinstance(decoded, bytes) or not pattern.search(decoded):
            continue
        plain = redact(decoded, pattern)
        body = (base64.encodebytes(plain) if encoding == "base64"
                else quopri.encodestring(plain))
        part.set_payload(body.decode("ascii"))
        changed = True
    if not changed:
        return redacted
    # The message's own line ends, and no header folded anew.
    linesep = "\r\n" if b"\r\n" in raw else "\n"
    return message.as_bytes(policy=compat32.clone(linesep=linesep, max_line_length=0))
