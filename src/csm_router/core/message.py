"""A frozen, parsed view of one inbound email, built with the stdlib ``email`` package only."""

import contextlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.headerregistry import HeaderRegistry
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime

from csm_router.core import headerwords
from csm_router.core.quotes import html_to_text, split_reply

__all__ = ["Attachment", "Inbound", "MalformedMessageError", "header_safe", "parse"]

_UNSTRUCTURED = HeaderRegistry(use_default_map=False)
_MAX_DECODED_HEADER = 16 * 1024
_MAX_ADDRESS_HEADER = 16 * 1024
_LINEBREAK = re.compile(r"\r\n|\r|\n")
_WHITESPACE = re.compile(r"\s+")
_SURROGATE = re.compile("[\ud800-\udfff]")
# What the email package refuses to write back into a header (str.splitlines() breaks a line
# there: U+2028, U+2029, U+0085, VT, FF...) and the other C0/C1 controls; a tab is fine.
_UNWRITABLE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_MAX_NAME = 200  # a display name longer than this is shortened (with an ellipsis)
_INJECTION = re.compile(r"[\r\n\x00]")
_INJECTION_CHECKED = ("subject", "from", "to", "reply-to", "message-id")
# Starts only where a run of address characters starts, and never gives back: linear even
# on a long run without "@" (otherwise every position in it would rescan the rest). No
# control character is part of an address.
_ADDR_CHAR = r"[^\s@<>()\[\],;:\"\x00-\x1f\x7f-\x9f]"
_ADDR_SPEC = re.compile(rf"(?<!{_ADDR_CHAR}){_ADDR_CHAR}++@{_ADDR_CHAR}++")
_BOUNDARY = re.compile(r'boundary\s*=\s*(?:"([^"]+)"|([^\s;"]+))', re.IGNORECASE)
_UNSAFE_FILENAME = re.compile(r"[\x00-\x1f\x7f]")


class MalformedMessageError(ValueError):
    """The message cannot be routed safely; it goes to quarantine."""

    reason: str

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message)  # both in args so the error pickles for job queues
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Attachment:
    """A non-body MIME leaf with its decoded bytes; ``filename`` is "" when none was given."""

    filename: str
    content_type: str
    data: bytes
    content_id: str | None = None
    inline: bool = False


@dataclass(frozen=True)
class Inbound:
    """One parsed inbound email; addresses are lower-cased addr-specs, ids are "<...>"."""

    raw: bytes
    message_id: str
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    subject: str
    sender: str
    sender_name: str
    reply_to: tuple[str, ...]
    to: tuple[str, ...]
    cc: tuple[str, ...]
    date: datetime | None
    text: str
    html: str | None
    fresh_text: str
    attachments: tuple[Attachment, ...]
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive), or None."""
        return next(iter(self.header_all(name)), None)

    def header_all(self, name: str) -> tuple[str, ...]:
        """Every value of header ``name`` (case-insensitive), in message order."""
        return tuple(v for k, v in self.headers if k.lower() == name.lower())

    @property
    def account(self) -> str:
        """The customer the sender belongs to (threads.account_of): the sender's domain,
        or at a free-mail provider the sender's own address. Lower-case."""
        from csm_router.core.threads import account_of  # threads decides; message only parses

        return account_of(self.sender)

    @property
    def received_at(self) -> float | None:
        """When the receiving server took the message: the date of the topmost Received
        header, which that server wrote (RFC 5321 4.4), in Unix seconds; None if absent."""
        stamp = (self.header("Received") or "").rpartition(";")[2].strip()
        if not stamp or len(stamp) > 100:
            return None
        try:
            when = parsedate_to_datetime(stamp)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()

    @property
    def content_type(self) -> str:
        """Top-level content type, lower-case; text/plain when absent or invalid."""
        value = (self.header("Content-Type") or "").split(";", 1)[0].strip().lower()
        return value if "/" in value else "text/plain"


def parse(raw: bytes, *, max_bytes: int = 25 * 1024 * 1024) -> Inbound:
    """Parse RFC 5322 bytes; raise MalformedMessageError if the message must be quarantined."""
    if len(raw) > max_bytes:
        raise MalformedMessageError("too-large", f"message is {len(raw)} bytes, over {max_bytes}")
    try:
        return _parse(bytes(raw))
    except MalformedMessageError:
        raise
    except Exception as exc:  # hostile input must end in quarantine, never crash the daemon
        raise MalformedMessageError(
            "unparsable", f"the email package failed on this message ({type(exc).__name__})"
        ) from exc


def _parse(raw: bytes) -> Inbound:
    msg = message_from_bytes(raw, policy=policy.compat32)
    headers = [(name, _decode_header(value)) for name, value in msg.raw_items()]
    for name, value in headers:
        if name.lower() in _INJECTION_CHECKED and _INJECTION.search(value):
            raise MalformedMessageError("header-injection", f"decoded {name} has CR, LF or NUL")
    senders = _addresses(_raw(msg, "from")[:1])
    if not senders:
        raise MalformedMessageError("no-sender", "no parsable From address")
    message_id = headerwords.message_id(next(iter(_raw(msg, "message-id")), ""))
    if message_id is None:
        raise MalformedMessageError("no-message-id", "missing, empty or unparsable Message-ID")
    subject = next((v for k, v in headers if k.lower() == "subject"), "")
    text, html, attachments = _bodies(msg)
    sender_name = _shorten(_WHITESPACE.sub(" ", header_safe(senders[0][0])).strip(), _MAX_NAME)
    return Inbound(
        raw=raw,
        message_id=message_id,
        in_reply_to=headerwords.msg_ids(" ".join(_raw(msg, "in-reply-to")),
                                        limit=headerwords.MAX_IN_REPLY_TO),
        references=headerwords.references(" ".join(_raw(msg, "references"))),
        subject=_WHITESPACE.sub(" ", header_safe(subject)).strip(),
        sender=senders[0][1],
        sender_name=sender_name,
        reply_to=tuple(a for _, a in _addresses(_raw(msg, "reply-to"))),
        to=tuple(a for _, a in _addresses(_raw(msg, "to"))),
        cc=tuple(a for _, a in _addresses(_raw(msg, "cc"))),
        date=_date(_raw(msg, "date")),
        text=text,
        html=html,
        fresh_text=split_reply(text)[0],
        attachments=tuple(attachments),
        # Values may end up in forwarded mail, so no header keeps a line break.
        headers=tuple((name, header_safe(value)) for name, value in headers),
    )


def header_safe(value: str) -> str:
    """`value` as text any header can carry: each character the email package refuses to
    write back (line and paragraph separators, VT, FF, NEL, other C0/C1 controls) becomes a
    space, and each lone surrogate (valid in no encoding) U+FFFD."""
    return _UNWRITABLE.sub(" ", _SURROGATE.sub("\ufffd", value))


def _shorten(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 1].rstrip() + "\u2026"


def _clean(value: str) -> str:
    """Turn surrogate-escaped 8-bit bytes into text (UTF-8, else Windows-1252)."""
    if not _SURROGATE.search(value):
        return value
    try:
        data = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # lone surrogates that never were bytes, e.g. from UTF-7
        return value.encode("utf-8", "replace").decode("utf-8")
    return data.decode("utf-8") if _is_utf8(data) else data.decode("cp1252", "replace")


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _raw(part: Message, name: str) -> list[str]:
    """Undecoded but unfolded values of header ``name``, 8-bit bytes made text."""
    return [_clean(_LINEBREAK.sub("", v)) for k, v in part.raw_items() if k.lower() == name]


def _decode_header(value: str) -> str:
    """Decode RFC 2047 words leniently; structure is ignored so no header can fail."""
    value = _clean(_LINEBREAK.sub("", value))
    # The stdlib decoder needs memory quadratic in the number of encoded words, so huge
    # headers are decoded by the linear decoder below instead; an undecodable header is
    # still worth keeping as it is.
    if "=?" in value and len(value) <= _MAX_DECODED_HEADER:
        with contextlib.suppress(Exception):
            value = str(_UNSTRUCTURED("x-unstructured", value))
    elif "=?" in value:
        value = headerwords.decode_run(value)
    return _clean(value).strip()


def _addresses(values: list[str]) -> list[tuple[str, str]]:
    """``(display name, lower-cased addr-spec)`` pairs; entries without an address dropped."""
    found = []
    for value in values:
        # The stdlib's address parser is not linear on hostile nesting: past a size no
        # real list of recipients reaches, only the linear scan below reads the header.
        pairs = ([(n, a.strip().lower()) for n, a in getaddresses([value])]
                 if len(value) <= _MAX_ADDRESS_HEADER else [])
        valid = [(n, a) for n, a in pairs if _ADDR_SPEC.fullmatch(a)]
        # Bare "Name user@host" or space-separated lists defeat getaddresses; scan for them.
        valid = valid or [("", a.lower()) for a in _ADDR_SPEC.findall(value)]
        found += [(header_safe(_decode_header(n)), a) for n, a in valid]
    return found


def _date(values: list[str]) -> datetime | None:
    try:
        return parsedate_to_datetime(values[0]) if values else None
    except (ValueError, TypeError, IndexError, OverflowError):
        return None


def _bodies(msg: Message) -> tuple[str, str | None, list[Attachment]]:
    """``(text, html, attachments)`` from the MIME tree."""
    leaves, broken = _leaves(msg)
    plain: list[Message] = []
    html_parts: list[Message] = []
    attachments: list[Attachment] = []
    for part in leaves:
        ctype, disposition = part.get_content_type(), part.get_content_disposition()
        filename = _filename(part)
        if ctype in ("text/plain", "text/html") and disposition != "attachment" and not filename:
            (plain if ctype == "text/plain" else html_parts).append(part)
            continue
        cid = next((header_safe(_decode_header(v)).strip() for v in _raw(part, "content-id")), "")
        attachments.append(
            Attachment(
                filename=filename,
                content_type=ctype,
                data=_payload_bytes(part),
                content_id=cid or None,
                inline=disposition == "inline",
            )
        )
    # A blank text/plain alternative is common; the HTML then carries the message.
    main = next((p for p in plain if _payload_bytes(p).strip()), None)
    main = main or next(iter(html_parts + plain), None)
    if main is None:
        if broken and msg.get_content_maintype() == "multipart":
            raise MalformedMessageError("broken-mime", "multipart message without a text body")
        return "", None, attachments
    text = _decode_text(main)
    if main.get_content_type() == "text/html":
        text = html_to_text(text)
    html: str | None = None
    if html_parts:
        # An undecodable alternative is not worth quarantining the message for.
        with contextlib.suppress(MalformedMessageError):
            html = _decode_text(html_parts[0])
    return text, html, attachments


def _leaves(root: Message) -> tuple[list[Message], bool]:
    """Non-multipart parts in order, and whether a multipart container failed to parse."""
    leaves: list[Message] = []
    broken = False
    stack = [root]  # iterative: hostile nesting must not hit the recursion limit
    while stack:
        part = stack.pop()
        if part.get_content_maintype() != "multipart":
            leaves.append(part)
            continue
        payload = part.get_payload()
        if isinstance(payload, list):
            children = [p for p in payload if isinstance(p, Message)]
        else:
            children = _resplit(part, payload)
        broken = broken or not children
        stack.extend(reversed(children))
    return leaves, broken


def _resplit(part: Message, payload: object) -> list[Message]:
    """Retry a multipart body with a lenient boundary, e.g. Outlook's unquoted ``----=_Next``."""
    match = _BOUNDARY.search(next(iter(_raw(part, "content-type")), ""))
    if not isinstance(payload, str) or match is None:
        return []
    if (match[1] or match[2]) == part.get_boundary():
        return []  # the email package already failed with this boundary
    boundary = re.escape(match[1] or match[2])
    # Like the email package, the line break before a boundary belongs to the boundary.
    body = re.split(rf"\r?\n--{boundary}--", "\n" + payload, maxsplit=1)[0]
    chunks = re.split(rf"\r?\n--{boundary}[ \t]*\r?\n", body)[1:]
    try:
        blobs = [chunk.encode("ascii", "surrogateescape") for chunk in chunks]
    except UnicodeEncodeError:
        return []
    return [message_from_bytes(blob, policy=policy.compat32) for blob in blobs]


def _filename(part: Message) -> str:
    """Declared filename without directories or control characters; "" if none."""
    try:
        # Parsed with compat32 for speed, so RFC 2047 words in names are decoded here.
        name = _decode_header(str(part.get_filename() or ""))
    except Exception:  # a garbled Content-Disposition must not lose the attachment
        name = ""
    name = _UNSAFE_FILENAME.sub("", name).replace("\\", "/").rpartition("/")[2]
    name = _WHITESPACE.sub(" ", header_safe(name)).strip()
    return "" if name.strip(".") == "" else name


def _payload_bytes(part: Message) -> bytes:
    """Transfer-decoded bytes of a leaf; message/* parts are re-serialised."""
    if part.is_multipart():
        payload = part.get_payload()
        subs = payload if isinstance(payload, list) else [payload]
        return b"".join(_serialise(s) for s in subs if isinstance(s, Message))
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _serialise(msg: Message) -> bytes:
    try:
        return msg.as_bytes(policy=policy.compat32)
    except UnicodeError:  # the bytes generator chokes on some broken encapsulated messages
        return msg.as_string(policy=policy.compat32).encode("utf-8", "replace")


def _decode_text(part: Message) -> str:
    data = _payload_bytes(part)
    charset = str(part.get_content_charset() or "us-ascii")
    codec = headerwords.codec_name(charset)
    seven_bit = codec in ("ascii", "utf-7") or (codec or "").startswith("iso2022")
    if seven_bit and not data.isascii():  # 8-bit bytes in a 7-bit charset: mislabelled
        codec = "utf-8" if _is_utf8(data) else "cp1252"
    text: str | None = None
    if codec is not None:
        with contextlib.suppress(LookupError):  # a binary codec such as "zlib" named as charset
            text = data.decode(codec, "replace")
    if text is None:
        if not _is_utf8(data):
            raise MalformedMessageError(
                "undecodable-charset", f"text in unknown charset {charset!r} is not ASCII or UTF-8"
            )
        text = data.decode("utf-8")
    return _clean(_LINEBREAK.sub("\n", text)).replace("\x00", "")
