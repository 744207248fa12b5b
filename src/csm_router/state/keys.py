"""Redis key names (`csm:<noun>:<id>`) and Redis replies read as str."""

from __future__ import annotations

from typing import Any

PREFIX = "csm:"


def key(*parts: object) -> str:
    """`key("thread", 1042)` -> `csm:thread:1042`."""
    return PREFIX + ":".join(str(p) for p in parts)


def text(value: Any) -> str:
    """A Redis reply (bytes, str or None) as str."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def text_hash(raw: Any) -> dict[str, str]:
    """A Redis hash reply as str -> str."""
    return {text(k): text(v) for k, v in dict(raw).items()}
