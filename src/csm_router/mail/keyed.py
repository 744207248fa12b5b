"""The key behind the product's own identifiers, and the VERP return address of a forward.

A forward's Message-ID points to its thread, and a delivery report addressed to its return
address moves that thread on. Both carry a keyed hash, so neither can be computed from what
anyone on the customer's mail could see; they stay deterministic, so a forward sent again
is recognisably the same mail.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import weakref
from typing import Any

from csm_router.config import Address, Settings

# Where one secret keyed every team's ids, before each team kept its own.
SHARED_SECRET_KEY = "csm:secret:ids"
VERP_TAG = "+b-"  # success+b-<token>@acme.com: "b" for bounce, beside "+r-" reply addresses

# The token is the keyed part of the forward's Message-ID: `<fwd.TOKEN@alias-domain>`.
_TOKEN = re.compile(r"[0-9a-f]{32}\.[0-9a-f]{12,16}")
_FORWARD_ID = re.compile(r"<fwd\.([0-9a-f]{32}\.[0-9a-f]{12,16})@([^<>@\s]+)>")

_cached: weakref.WeakKeyDictionary[Any, dict[str, bytes]] = weakref.WeakKeyDictionary()


def id_secret(redis: Any, settings: Settings, where: str) -> bytes:
    """The key for the product's ids: from ROUTER_REPLY_SECRET when set, else one random
    secret kept in Redis at `where` (the team's `secret:ids` key), made by whichever
    process asks first. A team's own, so a team moved to a Redis of its own takes it along;
    a new team's starts as the secret every team shared before, so ids already sent stay
    the same."""
    reply = settings.reply_secret
    if reply is not None:
        # Derived, not the reply secret itself: one secret, two purposes kept apart.
        return hmac.new(reply.get_secret_value().encode(), b"message-ids",
                        hashlib.sha256).digest()
    known = _cached.setdefault(redis, {})
    found = known.get(where)
    if found is None:
        shared = redis.get(SHARED_SECRET_KEY) if where != SHARED_SECRET_KEY else None
        fresh = _text(shared) or secrets.token_hex(32)
        # NX keeps a secret another process made first, GET answers it.
        old = redis.set(where, fresh, nx=True, get=True)
        found = known[where] = (fresh if old is None else _text(old)).encode()
    return found


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def forward_hash(secret: bytes, msgkey: str, owner: str, cause: str) -> str:
    """The keyed part of a forward's Message-ID (12 hex: short enough for a return address)."""
    return hmac.new(secret, f"{msgkey}\0{owner}\0{cause}".encode(),
                    hashlib.sha256).hexdigest()[:12]


def forward_token(message_id: str, alias: Address) -> str | None:
    """The token of a forward's Message-ID of ours (`<fwd.TOKEN@alias-domain>`), else None."""
    found = _FORWARD_ID.fullmatch(message_id.strip().lower())
    if found is None or found.group(2) != alias.domain.lower():
        return None
    return found.group(1)


def forward_id(token: str, alias: Address) -> str:
    """The forward's Message-ID a token names."""
    return f"<fwd.{token}@{alias.domain}>"


def verp_address(alias: Address, message_id: str) -> str:
    """The envelope sender of a forward: `success+b-<token>@acme.com`, or the alias itself
    for a Message-ID not of our forward form."""
    token = forward_token(message_id, alias)
    if token is None:
        return alias.address
    local, _, domain = alias.address.rpartition("@")
    return f"{local}{VERP_TAG}{token}@{domain}"


def verp_token(address: str, alias: Address) -> str | None:
    """The token of a return address of ours (`success+b-<token>@acme.com`), else None."""
    local, _, domain = address.strip().strip("<>").lower().rpartition("@")
    own_local, _, own_domain = alias.address.lower().rpartition("@")
    if domain != own_domain or not local.startswith(own_local + VERP_TAG):
        return None
    token = local[len(own_local) + len(VERP_TAG):]
    return token if _TOKEN.fullmatch(token) else None
