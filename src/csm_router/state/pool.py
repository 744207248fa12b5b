"""The pool as admins tune it: away, onboarding owners, signature tags."""

from __future__ import annotations

import re
import time

from csm_router.core.threads import account_of, format_tag, is_free_mail, new_tag
from csm_router.state.store import Store, key, text


class PoolError(ValueError):
    """An admin asked for something about a CSM or thread that does not hold."""

# A bare domain: letters, digits and hyphens in dot-separated labels (no scheme or path).
_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}")


def require_member(store: Store, address: str) -> str:
    """The address, normalised, if it is in the pool; PoolError naming the pool otherwise."""
    address = address.strip().lower()
    if store.settings.member(address) is None:
        members = ", ".join(m.address for m in store.settings.pool)
        raise PoolError(f"{address} is not in ROUTER_POOL ({members})")
    return address


def set_away(
    store: Store, address: str, until: float | None = None, now: float | None = None,
    backup: str | None = None,
) -> str:
    """Mark a CSM away (until a time, or until `back`); they get nothing new. With a
    `backup`, replies in their threads go to the backup, and come back to them after."""
    address = require_member(store, address)
    if until is not None and until <= (now if now is not None else time.time()):
        raise PoolError("--until is in the past: give a later time, or leave it out to mark "
                        f"{address} away until `csm-router back`")
    if backup is not None:
        backup = require_member(store, backup)
        if backup == address:
            raise PoolError(f"{address} cannot be their own backup")
    with store.redis.pipeline() as pipe:
        pipe.hset(key("away"), address, "" if until is None else repr(until))
        if backup is not None:
            pipe.hset(key("backup"), address, backup)
        else:
            pipe.hdel(key("backup"), address)
        pipe.execute()
    return address


def set_back(store: Store, address: str) -> list[int]:
    """A CSM is back: held threads can go to them, and the threads their backup covered
    are theirs again (answers those)."""
    address = require_member(store, address)
    out = store.run_script("back", {"csm": address})
    if address in store.settings.away:
        raise PoolError(f"{address} is still listed in ROUTER_AWAY; remove it there too")
    return [int(r) for r in out.get("returned") or []]


def assign_onboarding(store: Store, account: str, address: str, days: int, now: float) -> str:
    """Make `address` the onboarding owner of `account` for `days`: a customer domain, or
    one person's address at a free-mail provider (threads.account_of)."""
    address = require_member(store, address)
    account = onboarding_account(account)
    onboarding = key("onboarding", account)
    with store.redis.pipeline() as pipe:
        pipe.hset(onboarding, mapping={"owner": address, "since": now, "days": days})
        # Over once the account graduates to the pool.
        pipe.expireat(onboarding, int(now + max(days, 1) * 86400))
        pipe.execute()
    return account


def onboarding_account(given: str) -> str:
    """The account `given` names (`customer.com`, or `someone@gmail.com`); PoolError if none.

    A free-mail provider is no customer: its users are strangers to each other.
    """
    given = given.strip().lower().lstrip("@")
    local, at, domain = given.rpartition("@")
    if "." not in domain or not _DOMAIN.fullmatch(domain) or (at and not local):
        raise PoolError(f"{given!r} is not a customer domain: give it as customer.com")
    account = account_of(given)
    if account == domain and is_free_mail(domain):
        raise PoolError(f"{domain} is a free-mail provider, not a customer: its users are "
                        f"separate people; assign one address instead, e.g. someone@{domain}")
    return account


def signature_tag(store: Store, address: str) -> str:
    """The CSM's signature tag (`CSM-7KQ4XM`), created once and kept in Redis."""
    address = require_member(store, address)
    own_key = key("sigtag-of", address)
    while True:
        existing = store.redis.get(own_key)
        if existing is not None:
            return format_tag(text(existing))
        tag = new_tag()
        # Claim the tag first so two CSMs can never share one, then bind it to the CSM.
        if store.redis.set(key("sigtag", tag), address, nx=True):
            if store.redis.set(own_key, tag, nx=True):
                return format_tag(tag)
            store.redis.delete(key("sigtag", tag))  # another process won the race
