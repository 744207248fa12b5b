"""Redis key names (`csm:<noun>:<id>`) and Redis replies read as str."""

from __future__ import annotations

from typing import Any

from csm_router.config.teams import current_team

PREFIX = "csm:"


def prefix() -> str:
    """The keys' prefix for the team in hand: `csm:` alone, `csm:{eu}:` for team eu (the
    braces a Redis Cluster hash tag, so one team's keys live on one shard)."""
    team = current_team()
    return f"{PREFIX}{{{team}}}:" if team else PREFIX


def key(*parts: object) -> str:
    """`key("thread", 1042)` -> `csm:thread:1042` (`csm:{eu}:thread:1042` in team eu)."""
    return prefix() + ":".join(str(p) for p in parts)


def text(value: Any) -> str:
    """A Redis reply (bytes, str or None) as str."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def text_hash(raw: Any) -> dict[str, str]:
    """A Redis hash reply as str -> str."""
    return {text(k): text(v) for k, v in dict(raw).items()}
