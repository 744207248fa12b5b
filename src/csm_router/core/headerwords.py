"""Header text as hostile mail needs it read: RFC 2047 encoded words decoded in linear
time, and the message-ids of threading headers found however they are written."""

from __future__ import annotations

import binascii
import codecs
import contextlib
import re
from collections import OrderedDict
from collections.abc import Iterator

_WHITESPACE = re.compile(r"\s+")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Threading headers, scanned by small tokens so hostile input stays linear: a whole simple
# "<id>" (nothing in it can open or close a comment), a separator run, a special, a word.
_ID_TOKEN = re.compile(r'<[^<>()"\\\s]*>|[\s,;]+|\\.?|[<>()"]|[^\s,;<>()"\\]+', re.S)
# RFC 2047 encoded word; every part stops at the next "?", so a scan stays linear.
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_ID_SPECIALS = frozenset('<>()"')
_BRACKETED = re.compile(r"(<[^<>]*>)")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
MAX_IN_REPLY_TO = 10  # more is never a real reply
MAX_REFERENCES = 50  # the root and the latest: a long thread's middle matters least


def msg_ids(value: str, *, limit: int) -> tuple[str, ...]:
    """The first ``limit`` distinct message-ids, in order (In-Reply-To, Message-ID)."""
    ids: dict[str, None] = {}
    for ident in _scan_ids(value):
        ids.setdefault(ident, None)
        if len(ids) == limit:
            break
    return tuple(ids)


def references(value: str, *, limit: int = MAX_REFERENCES) -> tuple[str, ...]:
    """The thread root (RFC 5322: the first id) and the latest distinct ids after it."""
    ids = _scan_ids(value)
    root = next(ids, None)
    if root is None:
        return ()
    latest: OrderedDict[str, None] = OrderedDict()
    for ident in ids:
        if ident != root:
            latest.pop(ident, None)  # a repeated id counts where it was last written
            latest[ident] = None
            if len(latest) >= limit:
                latest.popitem(last=False)
    return (root, *latest)


def _scan_ids(value: str) -> Iterator[str]:
    """Message-ids as ``<id>``, bracketed or bare ``x@y``, whatever the sender's encoding.

    Python's own email package writes a long or non-ASCII id as RFC 2047 encoded words, so
    those are decoded first; comments are skipped, quoted phrases ("Your message of ...")
    never yield an id, and missing separators or brackets are tolerated.
    """
    depth, quoted = 0, False
    bracket: str | None = None  # text since an unclosed "<"
    bare = ""
    for tok in _ID_TOKEN.findall(_decode_words(value)):
        if depth:
            depth += 1 if tok == "(" else -1 if tok == ")" else 0
        elif quoted:
            quoted = tok != '"'
        elif len(tok) > 1 and tok[0] == "<":  # a whole "<id>": an unclosed "<" opened none
            yield from _bare(bare)
            yield from _id(tok[1:-1])
            bare, bracket = "", None
        elif bracket is not None:
            if tok == ">":
                yield from _id(bracket)
                bracket = None
            else:
                bracket = "" if tok == "<" else bracket + tok
        elif tok in _ID_SPECIALS or tok[0] in ",;" or tok[0].isspace():
            yield from _bare(bare)
            bare = ""
            depth, quoted = (1 if tok == "(" else 0), tok == '"'
            bracket = "" if tok == "<" else None
        else:
            bare += tok
    yield from _bare(bracket if bracket is not None else bare)  # a truncated "<id@host"


def _bare(word: str) -> Iterator[str]:
    if "@" in word.strip("@"):
        yield from _id(word)


def _id(text: str) -> Iterator[str]:
    ident = _WHITESPACE.sub("", text)  # folded inside the brackets by a broken mailer
    if ident and not _CONTROL.search(ident):
        yield f"<{ident}>"


def _decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words outside ``<...>`` (none may be inside a msg-id)."""
    if "=?" not in value:
        return value
    parts = _BRACKETED.split(value)  # odd items are "<...>", kept as written
    return "".join(part if i % 2 else decode_run(part) for i, part in enumerate(parts))


def decode_run(text: str) -> str:
    """Decode the encoded words of ``text`` in linear time (the stdlib decoder is quadratic)."""
    out: list[str] = []
    data, charset = bytearray(), ""
    start: int | None = None  # where the words being joined begin
    end = 0
    for match in _ENCODED_WORD.finditer(text):
        gap = text[end : match.start()]
        word = _word_bytes(match[2], match[3])
        word_charset = match[1].partition("*")[0].lower()  # RFC 2231 may add "*language"
        # Whitespace between two encoded words is folding, not text (RFC 2047 section 6.2).
        folded = start is not None and (not gap or gap.isspace())
        if word is not None and folded and word_charset == charset:
            data += word  # a character may be split across words: join bytes, then decode
        else:
            if start is not None:
                out.append(_decoded(text[start:end], data, charset))
            if word is None:  # not a real encoded word: keep it as written
                out += [gap, match[0]]
                start = None
            else:
                out.append("" if folded else gap)
                data, charset, start = bytearray(word), word_charset, match.start()
        end = match.end()
    if start is not None:
        out.append(_decoded(text[start:end], data, charset))
    out.append(text[end:])
    return "".join(out)


def _decoded(written: str, data: bytearray, charset: str) -> str:
    """Decoded text, or the words as written if they hide line breaks or other controls."""
    codec = codec_name(charset) or "utf-8"
    try:
        text = bytes(data).decode(codec, "replace")
    except LookupError:  # a binary codec such as "zlib" named as charset
        text = bytes(data).decode("utf-8", "replace")
    # UTF-7 can spell half a surrogate pair: no encoding (nor Redis' JSON) takes that.
    text = _SURROGATE.sub("\ufffd", text)
    return written if _CONTROL.search(text) else text


def _word_bytes(encoding: str, text: str) -> bytes | None:
    try:
        if encoding in "bB":
            return binascii.a2b_base64(text + "=" * (-len(text) % 4))
        return binascii.a2b_qp(text.encode("ascii"), header=True)
    except (binascii.Error, UnicodeEncodeError):
        return None


def message_id(value: str) -> str | None:
    """A Message-ID header's id as ``<id>``, or None if it holds none."""
    ids = msg_ids(value, limit=1)
    token = value.strip()
    if not ids and token and not re.search(r"[\s<>]", token):
        return f"<{token}>"  # a lone bare token without "@" is still a usable id
    return ids[0] if ids else None


def codec_name(charset: str) -> str | None:
    """Python codec name for a MIME charset, trying ``x-mac-cyrillic`` as ``mac-cyrillic``."""
    for name in (charset, charset.removeprefix("x-")):
        with contextlib.suppress(LookupError, ValueError):
            return codecs.lookup(name).name
    return None
