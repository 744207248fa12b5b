"""Threads over months: quiet threads close, capacity holds for named CSMs, stranded work is
held, sweeps are bounded (the Redis scripts, on fakeredis with Lua)."""

from __future__ import annotations

import json

from csm_router.core.decision import Decision
from csm_router.core.message import parse
from csm_router.lead import poolstatus
from csm_router.runtime import record_decision
from csm_router.state import pool
from csm_router.state.store import Store, key, message_key
from test_store import ALICE, BOB, CAROL, NOW, csm_reply, mail, make_store, route

HOUR = 3600.0


def answered_thread(store: Store, sender: str = "jane@globex.com", at: float = NOW) -> int:
    """A new thread (to Alice, first in the round-robin) that its owner has answered."""
    first = route(store, mail(sender), at)
    assert first.ref is not None and first.owner is not None
    csm_reply(store, first.owner, first.ref, "Here is how.", now=at + 600)
    return first.ref


def events(store: Store, ref: int) -> list[str]:
    return [e["event"] for e in store.events(ref)]


def test_an_answered_thread_closes_once_quiet_for_close_after_and_frees_capacity() -> None:
    store = make_store(close_after="2h", max_open_per_csm=1)
    ref = answered_thread(store)
    assert store.sweep(NOW + 600 + 2 * HOUR - 1)["closed"] == []
    closed = store.sweep(NOW + 600 + 2 * HOUR)["closed"]
    assert closed == [{"ref": ref, "owner": ALICE}]
    assert store.thread(ref)["state"] == "closed"
    assert store.events(ref)[-1]["why"] == "quiet for 2h"
    assert store.redis.scard(key("open", ALICE)) == 0
    assert store.redis.zcard(key("quiet")) == 0
    assert store.sweep(NOW + 5 * HOUR)["closed"] == []  # closed once


def test_a_thread_awaiting_its_answer_never_closes_by_itself() -> None:
    store = make_store(close_after="90s")
    ref = route(store, mail()).ref or 0
    for minutes in (30, 61, 200, 60 * 24 * 30):
        assert store.sweep(NOW + minutes * 60)["closed"] == []
    assert store.thread(ref)["state"] == "open"  # escalated instead, still open
    assert "escalated" in events(store, ref)


def test_customer_mail_after_the_answer_awaits_the_csm_and_restarts_the_quiet() -> None:
    store = make_store(close_after="2h")
    ref = answered_thread(store)
    later = route(store, mail(subject=f"Re: [CS-{ref}] Question"), NOW + HOUR)
    assert later.owner == ALICE
    assert store.sweep(NOW + 600 + 2 * HOUR)["closed"] == []
    assert [c["ref"] for c in store.sweep(NOW + 3 * HOUR)["closed"]] == [ref]


def test_the_customer_writing_after_closure_reopens_with_the_same_csm() -> None:
    store = make_store(close_after="2h")
    ref = answered_thread(store)
    route(store, mail("other@initech.com"))  # the round-robin moves on meanwhile
    store.sweep(NOW + 3 * HOUR)
    again = route(store, mail(subject=f"Re: [CS-{ref}] Question"), NOW + 4 * HOUR)
    assert (again.ref, again.owner, again.state) == (ref, ALICE, "decided")
    assert store.thread(ref)["state"] == "open"
    assert store.redis.zscore(key("due"), ref) is not None  # awaiting an answer again
    assert store.redis.zscore(key("quiet"), ref) is None


def test_reopening_with_a_full_owner_goes_to_the_next_csm_saying_why() -> None:
    store = make_store(close_after="2h", max_open_per_csm=1)
    ref = answered_thread(store)
    store.sweep(NOW + 3 * HOUR)
    for customer in ("b@b.com", "c@c.com", "a@a.com"):  # Bob, Carol, then Alice again
        route(store, mail(customer), NOW + 3 * HOUR)
    assert store.redis.scard(key("open", ALICE)) == 1
    pool.set_back(store, BOB)
    store.redis.delete(key("open", BOB))  # Bob's thread went to Support meanwhile
    msg = mail(subject=f"Re: [CS-{ref}] Question")
    again = route(store, msg, NOW + 4 * HOUR)
    assert (again.ref, again.owner) == (ref, BOB)
    assert "alice@acme.com is full (1 open threads)" in store.message(
        message_key(msg, msg.raw))["why"]


def test_a_reply_in_a_thread_its_csm_holds_is_never_refused_for_capacity() -> None:
    store = make_store(max_open_per_csm=1)
    first = route(store, mail())
    again = route(store, mail(subject=f"Re: [CS-{first.ref}] Question"))
    assert (again.ref, again.owner) == (first.ref, ALICE)


def test_an_onboarding_owner_at_capacity_gets_no_new_thread() -> None:
    store = make_store(max_open_per_csm=1)
    pool.assign_onboarding(store, "globex.com", CAROL, 90, NOW - 86400)
    assert route(store, mail("jane@globex.com")).owner == CAROL
    second = route(store, mail("joe@globex.com", "Another question"))
    assert second.owner in (ALICE, BOB)
    record = store.message(store.thread_messages(second.ref or 0)[-1])
    assert record["rule"] == "onboarding-owner"
    assert "carol@acme.com is full" in record["why"]


def test_a_signature_tag_of_a_full_csm_starts_no_thread_with_them() -> None:
    store = make_store(max_open_per_csm=1)
    tag = pool.signature_tag(store, BOB)
    route(store, mail("a@a.com"))  # Alice
    route(store, mail("b@b.com"))  # Bob: now full
    msg = parse(
        f"From: zed@zed.com\r\nTo: success@acme.com\r\nSubject: New\r\n"
        f"Message-ID: <tag@zed.com>\r\n\r\nAnother thing.\r\n\r\n> Cheers\r\n> {tag}\r\n"
        .encode())
    out = route(store, msg)
    assert out.owner == CAROL
    record = store.message(message_key(msg, msg.raw))
    assert record["rule"] == "known-thread" and "bob@acme.com is full" in record["why"]


def test_recording_refuses_a_named_csm_at_capacity_whatever_the_rules_saw() -> None:
    # Two routers may decide at once from the same counts: the script settles it.
    store = make_store(max_open_per_csm=1)
    route(store, mail("a@a.com"))  # Alice is full
    msg = mail("c@c.com")
    decision = Decision.to_csm(ALICE, rule="onboarding-owner", why="onboarding owner of c.com")
    out = record_decision(store, message_key(msg, msg.raw), msg, decision, NOW)
    assert out.owner == BOB
    assert "alice@acme.com is full" in store.message(message_key(msg, msg.raw))["why"]


def test_an_overdue_thread_with_nobody_to_take_it_is_held_and_released_first() -> None:
    store = make_store()
    stranded = route(store, mail()).ref or 0
    for csm in (BOB, CAROL):
        pool.set_away(store, csm)
    out = store.sweep(NOW + 61 * 60)
    assert out["held"] == [{"ref": stranded, "previous": ALICE, "due": NOW + HOUR}]
    assert store.thread(stranded)["state"] == "held"
    assert store.redis.zscore(key("held"), stranded) is not None
    assert store.redis.scard(key("open", ALICE)) == 0
    assert poolstatus.held_count(store) == 1
    assert [r.overdue for r in poolstatus.status(store, NOW + 62 * 60)] == [0, 0, 0]
    pool.set_away(store, ALICE)
    later = route(store, mail("late@initech.com"), NOW + 70 * 60)
    assert later.state == "held"
    pool.set_back(store, BOB)
    released, owed = store.release_held(NOW + 80 * 60, limit=1)
    assert [(r.ref, r.owner) for r in released] == [(stranded, BOB)]
    (entry,) = owed
    args = json.loads(store.redis.hget(key("outbox", "e", entry), "args") or "{}")
    assert args["msgkey"] == store.thread(stranded)["last_msg"]
    assert args["cause"].startswith("overdue-")
    assert store.sweep(NOW + 81 * 60)["held"] == []  # the lead was told once


def test_the_sweep_works_in_bounded_batches() -> None:
    store = make_store(close_after="2h")
    refs = [answered_thread(store, f"c{n}@c{n}.com") for n in range(5)]
    batches = [store.sweep(NOW + 3 * HOUR, batch=2)["closed"] for _ in range(4)]
    assert [len(b) for b in batches] == [2, 2, 1, 0]
    assert sorted(c["ref"] for b in batches for c in b) == refs


def test_a_thread_with_support_or_closed_by_hand_is_not_swept_as_quiet() -> None:
    store = make_store(close_after="2h", support_address="support@acme.com")
    to_support, closed = answered_thread(store), answered_thread(store, "joe@initech.com")
    csm_reply(store, ALICE, to_support, "#support", now=NOW + 900)
    owner = store.thread(closed)["owner"]
    csm_reply(store, owner, closed, "#close", now=NOW + 900)
    assert store.redis.zcard(key("quiet")) == 0
    assert store.sweep(NOW + 5 * HOUR)["closed"] == []
    assert [store.thread(r)["state"] for r in (to_support, closed)] == ["support", "closed"]
    assert events(store, closed).count("closed") == 1
