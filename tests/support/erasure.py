"""Traces of a person in Redis, found apart from `forget`'s own matcher: every key of every
type, its values also unpacked (compressed, or a message's encoded parts)."""

from __future__ import annotations

import contextlib
import email
import re
import zlib
from email.policy import compat32
from typing import Any


def scan(redis: Any, address: str) -> list[str]:
    """Every key that still names `address`, found apart from forget's own matcher: each
    key of every type, its values also unpacked (compressed, or a message's encoded
    parts)."""
    word = whole(address)
    found = []
    for name in redis.scan_iter("*"):
        kind, values = redis.type(name).decode(), [name]
        if kind == "string":
            values.append(redis.get(name))
        elif kind == "hash":
            values += [x for pair in redis.hgetall(name).items() for x in pair]
        elif kind == "list":
            values += redis.lrange(name, 0, -1)
        elif kind == "set":
            values += list(redis.smembers(name))
        elif kind == "zset":
            values += redis.zrange(name, 0, -1)
        else:
            assert kind == "stream", kind
            values += [x for _, f in redis.xrange(name) for pair in f.items() for x in pair]
        if any(word.search(text) for value in values for text in unpacked(value)):
            found.append(name.decode())
    return sorted(found)


def whole(address: str) -> re.Pattern[str]:
    """`address` as a whole address: not in joann@globex.com nor ann@globex.com.au."""
    return re.compile(r"(?<![\w.+-])" + re.escape(address) + r"(?![\w-]|\.\w)",
                      re.IGNORECASE)


def unpacked(value: bytes) -> list[str]:
    texts = [value.decode("utf-8", "replace")]
    with contextlib.suppress(zlib.error):
        texts.append(zlib.decompress(value).decode("utf-8", "replace"))
    if b"\n\n" in value.replace(b"\r\n", b"\n"):  # perhaps a message: its parts decoded
        for part in email.message_from_bytes(value, policy=compat32).walk():
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                texts.append(payload.decode("utf-8", "replace"))
    return texts
