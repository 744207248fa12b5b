"""An OAuth login the identity provider refuses, known to the whole deployment.

A refusal in any process (a router's IMAP login, a worker's SMTP login) is written here,
so `/healthz` fails and the status page says why, whichever host it happened on, and the
lead is told once per episode. The next token granted anywhere ends the episode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis import Redis

from csm_router.state.keys import key, text_hash
from csm_router.state.store import Store


@dataclass(frozen=True)
class Refusal:
    """The login refused now: the provider's reason in plain words, since when, by whom."""

    line: str
    since: float
    by: str
    last: float


def record_refusal(store: Store, line: str, by: str, now: float | None = None) -> list[str]:
    """Note a refusal; answers the outbox entries owed (the lead's notice, the first time)."""
    out = store.run_script("login", {"op": "refused", "line": line, "by": by,
                                     "now": now if now is not None else time.time()})
    return [str(i) for i in out.get("owed") or []]


def record_grant(store: Store) -> bool:
    """A token was granted: the episode, if any, is over. Answers whether one was."""
    return bool(store.run_script("login", {"op": "granted"}).get("ended"))


def refusal(redis: Redis) -> Refusal | None:
    """The refusal now, if any."""
    found = text_hash(redis.hgetall(key("login", "refused")))
    if not found.get("line"):
        return None
    return Refusal(found["line"], float(found.get("since") or 0), found.get("by", ""),
                   float(found.get("last") or 0))
