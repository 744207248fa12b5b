"""A backup for whoever is away: replies in their threads go to the backup with a note, their
new threads go elsewhere, and on return every covered thread comes back to them."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from csm_router.config import load_settings
from csm_router.lead.poolstatus import status
from csm_router.lead.statuspage import overview
from csm_router.runtime import Runtime
from csm_router.state import pool
from csm_router.state.store import Store, key
from support.routing import Mail

ALICE, BOB, CAROL = "alice@acme.com", "bob@acme.com", "carol@acme.com"
AUTH = "Authentication-Results: mx.acme.test; dmarc=pass header.from=acme.com\r\n"
NOW = 1_800_000_000.0


def make_store(**settings: Any) -> Store:
    values: dict[str, Any] = {"alias": "success@acme.com", "pool": f"{ALICE}, {BOB}, {CAROL}",
                              "away": "", "max_open_per_csm": 0,
                              "trusted_authserv_id": "mx.acme.test"}
    rt = Runtime.from_settings(load_settings(**(values | settings)), fakeredis.FakeRedis())
    rt.store.ensure_sequence()
    return rt.store


def backup_shown(store: Store, csm: str) -> str | None:
    (row,) = [r for r in status(store, NOW) if r.address == csm]
    page = next(m for m in overview(store, NOW)["pool"] if m["csm"] == csm)
    assert (f", backup {row.backup}" in str(page["away"])) is (row.backup is not None)
    return row.backup


def open_of(store: Store, csm: str) -> set[int]:
    return {int(r) for r in store.redis.smembers(key("open", csm))}


def alices_thread(store: Store, mail: Mail) -> int:
    """Jane's thread, handed out to Alice (the first in the round robin)."""
    first = mail("jane@globex.com", NOW, subject="Export")
    assert first.owner == ALICE
    return first.ref


def test_a_backup_takes_the_replies_and_hands_the_threads_back_on_return() -> None:
    store = make_store()
    mail = Mail(store)
    ref = alices_thread(store, mail)
    pool.set_away(store, ALICE, backup=BOB)
    assert backup_shown(store, ALICE) == BOB  # `status`, its --json and the page say so
    reply = mail("jane@globex.com", NOW + 60, reply_to="<m1@example.com>")
    assert (reply.ref, reply.owner) == (ref, BOB)
    (event,) = [e for e in store.events(ref) if e.get("event") == "routed"]
    assert f"owner {ALICE} is away: {BOB} covers as their backup" in event["why"]
    assert open_of(store, BOB) == {ref} and open_of(store, ALICE) == set()
    # Alice's new threads are not handed out to her meanwhile.
    assert {mail(f"c{n}@c{n}.com", NOW + 120 + n).owner for n in range(4)} == {BOB, CAROL}
    # Bob answers: the response is his, the thread still Alice's to come back to.
    answered = mail(BOB, NOW + 300, subject=f"Re: [CS-{ref}] Export", headers=AUTH)
    assert answered.owner == BOB
    assert store.thread(ref)["covering_for"] == ALICE
    assert pool.set_back(store, ALICE) == [ref]
    assert store.thread(ref)["owner"] == ALICE and "covering_for" not in store.thread(ref)
    assert ref in open_of(store, ALICE) and ref not in open_of(store, BOB)
    assert store.redis.hgetall(key("backup")) == {}
    assert backup_shown(store, ALICE) is None
    assert [e["event"] for e in store.events(ref)][-1] == "returned"
    again = mail("jane@globex.com", NOW + 600, reply_to="<m1@example.com>")
    assert again.owner == ALICE  # hers again
    assert pool.set_back(store, ALICE) == []  # nothing twice


def test_away_until_a_time_hands_the_covered_threads_back_by_itself() -> None:
    store = make_store()
    mail = Mail(store)
    ref = alices_thread(store, mail)
    pool.set_away(store, ALICE, until=NOW + 3600, now=NOW, backup=CAROL)
    assert mail("jane@globex.com", NOW + 60, reply_to="<m1@example.com>").owner == CAROL
    store.release_held(now=NOW + 1800)  # still away: nothing comes back
    assert store.thread(ref)["owner"] == CAROL
    store.release_held(now=NOW + 3601)  # the worker's regular pass, once she is back
    assert store.thread(ref)["owner"] == ALICE and ref in open_of(store, ALICE)


@pytest.mark.parametrize(("backup_state", "said"), [
    ("away", f"and their backup {BOB} is away"),
    ("left", f"and their backup {BOB} has left the pool"),
])
def test_a_backup_who_cannot_take_it_passes_it_to_the_round_robin(
        backup_state: str, said: str) -> None:
    store = make_store()
    mail = Mail(store)
    ref = alices_thread(store, mail)
    pool.set_away(store, ALICE, backup=BOB)
    if backup_state == "away":
        pool.set_away(store, BOB)
    else:
        store.redis.hset(key("backup"), ALICE, "dave@acme.com")
        said = said.replace(BOB, "dave@acme.com")
    reply = mail("jane@globex.com", NOW + 60, reply_to="<m1@example.com>")
    assert reply.owner in ({CAROL} if backup_state == "away" else {BOB, CAROL})
    (event,) = [e for e in store.events(ref) if e.get("event") == "routed"]
    assert said in event["why"]
    assert "covering_for" not in store.thread(ref)  # nobody covers: Carol's for good


def test_a_backup_must_be_another_pool_member() -> None:
    store = make_store()
    with pytest.raises(pool.PoolError, match="own backup"):
        pool.set_away(store, ALICE, backup=ALICE)
    with pytest.raises(pool.PoolError):
        pool.set_away(store, ALICE, backup="stranger@acme.com")
    assert store.redis.hgetall(key("away")) == {}  # refused whole


def test_away_again_without_a_backup_forgets_the_backup() -> None:
    store = make_store()
    pool.set_away(store, ALICE, backup=BOB)
    pool.set_away(store, ALICE)
    assert store.redis.hgetall(key("backup")) == {}
