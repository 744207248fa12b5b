"""The pool and the snapshot most rule tests start from."""

from __future__ import annotations

from csm_router.config import PoolMember
from csm_router.core.decision import Snapshot

NOW = 1_772_528_400.0  # 2026-03-03 09:00 UTC
POOL = (
    PoolMember("alice@acme.com", "Alice Smith", 2),
    PoolMember("bob@acme.com", "Bob Jones"),
    PoolMember("carol@acme.com"),
)
# Rule tests start from a verified sender; the impersonation tests take that away.
SNAP = Snapshot(now=NOW, alias="success@acme.com", pool=POOL, away=frozenset(),
                sender_verified=True)
