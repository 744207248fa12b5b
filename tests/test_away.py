"""Away is decided in Lua (picking an owner) and in Python (the rules, the pool's status):
both must read `csm:away` alike."""

from __future__ import annotations

import json
from importlib import resources

import fakeredis
import pytest

from csm_router.config import load_settings
from csm_router.core.decision import Snapshot, away_at
from csm_router.lead import poolstatus
from csm_router.state import pool
from csm_router.state.store import Store, key, text_hash

ALICE, BOB = "alice@acme.com", "bob@acme.com"
NOW = 1_800_000_000.0


def make_store(away: str = "") -> Store:
    return Store(fakeredis.FakeRedis(), load_settings(
        alias="Acme Customer Success <success@acme.com>",
        pool="Alice <alice@acme.com>, Bob <bob@acme.com>", away=away, max_open_per_csm=0))


def lua_is_away(store: Store, address: str, now: float) -> bool:
    """lua/common.lua `is_away`, asked directly, with the context the scripts get."""
    lua = resources.files("csm_router.state") / "lua"
    probe = store.redis.register_script(
        (lua / "common.lua").read_text() + "\nreturn cjson.encode({is_away(d.addr)})")
    payload = {"has_lead": False, "retention": 86400, "wall": now,
               **store._routing_context(now), "now": now, "addr": address}
    return bool(json.loads(probe(args=[json.dumps(payload)]))[0])


def python_is_away(store: Store, address: str, now: float) -> bool:
    away = away_at(text_hash(store.redis.hgetall(key("away"))), now, store.settings.away)
    snap = Snapshot(now=now, alias=store.settings.alias.address, pool=store.settings.pool,
                    away=away)
    assert snap.is_away(address) == (address in store.away_now(
        store.redis.hgetall(key("away")), now))
    return snap.is_away(address)


@pytest.mark.parametrize(("mark", "away"), [
    (None, False),  # no entry
    ("", True),  # away until `csm-router back`
    (NOW + 60, True),  # until a time still ahead
    (NOW - 60, False),  # until a time already past: back
    (NOW, False),  # until this very moment: back
])
def test_lua_and_python_agree_on_who_is_away(mark: float | str | None, away: bool) -> None:
    store = make_store()
    if mark is not None:
        store.redis.hset(key("away"), BOB, mark if mark == "" else repr(mark))
    assert lua_is_away(store, BOB, NOW) is away
    assert python_is_away(store, BOB, NOW) is away
    assert lua_is_away(store, ALICE, NOW) is python_is_away(store, ALICE, NOW) is False


def test_router_away_is_away_in_both_whatever_the_hash_says() -> None:
    store = make_store(away=BOB)
    store.redis.hset(key("away"), BOB, repr(NOW - 60))
    assert lua_is_away(store, BOB, NOW) is python_is_away(store, BOB, NOW) is True


def test_the_pool_status_reads_away_as_the_scripts_do() -> None:
    store = make_store()
    pool.set_away(store, BOB, NOW + 60, now=NOW - 120)
    rows = {r.address: r for r in poolstatus.status(store, NOW)}
    assert rows[BOB].away and rows[BOB].away_until
    later = {r.address: r for r in poolstatus.status(store, NOW + 60)}
    assert not later[BOB].away and later[BOB].away_until is None
    assert lua_is_away(store, BOB, NOW + 60) is False
