"""Routing by working hours and premium accounts, with the real scripts on an in-memory
Redis and the clock set by each test."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import fakeredis
import pytest

from csm_router.config import load_settings
from csm_router.core.decide import decide
from csm_router.core.message import parse
from csm_router.lead import report
from csm_router.lead.poolstatus import status
from csm_router.runtime import Runtime
from csm_router.state.pool import set_away
from csm_router.state.store import Outcome, Store, key, message_key

ALICE, BOB, CAROL = "alice@acme.com", "bob@acme.com", "carol@acme.com"
HOURS = f"{ALICE}=Europe/Berlin 09-17 Mon-Fri; {BOB}=America/New_York 09-18 Mon-Fri"


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def make_store(**settings: Any) -> Store:
    values: dict[str, Any] = {"alias": "success@acme.com", "pool": f"{ALICE}, {BOB}",
                              "away": "", "max_open_per_csm": 0,
                              "overflow_address": "cs-lead@acme.com", "hours": HOURS}
    rt = Runtime.from_settings(load_settings(**(values | settings)), fakeredis.FakeRedis())
    rt.store.ensure_sequence()
    return rt.store


Writer = Callable[..., Outcome]


@pytest.fixture
def store() -> Store:
    return make_store()


def writer(store: Store) -> Writer:
    counter = iter(range(1, 10_000))

    def write(sender: str, at: float, *, reply_to: str = "", subject: str = "Question",
              headers: str = "") -> Outcome:
        n = next(counter)
        threading = f"In-Reply-To: {reply_to}\r\n" if reply_to else ""
        raw = (f"{headers}From: {sender}\r\nTo: success@acme.com\r\nSubject: {subject}\r\n"
               f"Message-ID: <m{n}@example.com>\r\n{threading}\r\nHello\r\n").encode()
        msg = parse(raw)
        decision = decide(msg, store.snapshot(msg, at))
        return store.record(message_key(msg, raw), msg, decision, at, raw=raw)

    return write


def owed_kinds(store: Store, outcome: Outcome) -> list[str]:
    return [entry.split("-")[0] for entry in outcome.owed]


def test_new_threads_go_only_to_whoever_is_on_shift(store: Store) -> None:
    write = writer(store)
    morning = utc("2026-11-27 09:00")  # 10:00 in Berlin, 04:00 in New York
    assert {write(f"c{n}@c{n}.com", morning).owner for n in range(3)} == {ALICE}
    evening = utc("2026-11-27 20:00")  # 21:00 in Berlin, 15:00 in New York
    assert {write(f"d{n}@d{n}.com", evening).owner for n in range(3)} == {BOB}


def test_with_nobody_on_shift_threads_wait_for_the_next_shift_in_arrival_order(
    store: Store,
) -> None:
    write = writer(store)
    saturday = utc("2026-11-28 12:00")
    held = [write(f"c{n}@c{n}.com", saturday + n) for n in range(3)]
    assert [h.state for h in held] == ["held"] * 3
    # The schedule, not an overflow: the lead is not told about each one.
    assert all("overflow" not in owed_kinds(store, h) for h in held)
    released, _ = store.release_held(now=utc("2026-11-29 12:00"))  # Sunday: still nobody
    assert released == []
    monday = utc("2026-11-30 08:00")  # 09:00 in Berlin
    released, owed = store.release_held(now=monday)
    assert [(r.ref, r.owner) for r in released] == [(h.ref, ALICE) for h in held]
    assert len(owed) == 3
    due = float(store.thread(held[0].ref)["due"])
    assert due == monday + 3600  # the clock starts when someone is there to answer


def test_the_first_response_clock_counts_working_time(store: Store) -> None:
    write = writer(store)
    late = utc("2026-11-27 22:00")  # 23:00 Berlin, 17:00 New York: Bob is on
    outcome = write("jane@globex.com", late)
    assert outcome.owner == BOB
    due = float(store.thread(outcome.ref)["due"])
    assert due == utc("2026-11-27 23:00")  # within Bob's shift, which ends then
    lone = make_store(pool=ALICE, hours=f"{ALICE}=Europe/Berlin 09-17 Mon-Fri")
    held = writer(lone)("joe@initech.io", late)
    lone.release_held(now=utc("2026-11-30 08:00"))
    # Held over the weekend: the clock started Monday morning, not on Friday night.
    assert float(lone.thread(held.ref)["due"]) == utc("2026-11-30 09:00")


def test_a_reply_waits_for_its_off_shift_owner_unless_the_target_would_be_missed() -> None:
    store = make_store(first_response_minutes=600)  # ten working hours
    write = writer(store)
    friday = utc("2026-11-27 15:30")  # 16:30 in Berlin
    first = write("jane@globex.com", friday, subject="Export")
    assert first.owner == ALICE
    evening = utc("2026-11-27 20:00")  # Alice gone until Monday 08:00 UTC
    # Due after ten working hours: Friday until 23:00 UTC, then Monday: Alice is back first.
    again = write("jane@globex.com", evening, reply_to="<m1@example.com>")
    assert again.owner == ALICE
    assert any("off shift until Mon 08:00 UTC: it waits for them" in e.get("why", "")
               for e in store.events(first.ref))
    short = make_store(first_response_minutes=60)
    write = writer(short)
    first = write("jane@globex.com", friday, subject="Export")
    assert first.owner == ALICE
    moved = write("jane@globex.com", utc("2026-11-27 15:45"), reply_to="<m1@example.com>")
    assert moved.owner == ALICE  # still on shift: hers
    after = write("jane@globex.com", evening, reply_to="<m1@example.com>")
    assert after.owner == BOB  # due Friday 16:30: Alice is back too late
    events = short.events(first.ref)
    assert any("off shift until Mon 08:00 UTC, after the first-response target"
               in e.get("why", "") for e in events)


def test_a_reply_in_an_answered_thread_waits_for_its_owner() -> None:
    store = make_store()
    write = writer(store)
    first = write("jane@globex.com", utc("2026-11-27 15:30"))
    store.redis.hset(key("thread", first.ref), "due", "")  # answered: no clock runs
    later = write("jane@globex.com", utc("2026-11-27 20:00"), reply_to="<m1@example.com>")
    assert later.owner == ALICE


def test_status_shows_who_is_on_shift(store: Store) -> None:
    rows = {r.address: r for r in status(store, utc("2026-11-27 20:00"))}
    assert rows[BOB].on_shift and rows[BOB].back_on_shift is None
    assert not rows[ALICE].on_shift
    assert rows[ALICE].back_on_shift == "2026-11-30T08:00+00:00"
    assert rows[ALICE].shift == "09:00-17:00 Mon, Tue, Wed, Thu, Fri (Europe/Berlin)"


def test_away_until_ends_by_itself_and_held_threads_then_go_out() -> None:
    store = make_store(pool=ALICE, hours="")
    write = writer(store)
    now = utc("2026-11-27 10:00")
    set_away(store, ALICE, until=now + 3600, now=now)
    held = write("jane@globex.com", now)
    assert held.state == "held"
    assert store.release_held(now=now + 1800)[0] == []
    released, _ = store.release_held(now=now + 3601)
    assert [(r.ref, r.owner) for r in released] == [(held.ref, ALICE)]
    assert write("joe@initech.io", now + 3700).owner == ALICE


def premium_store(**extra: Any) -> Store:
    return make_store(pool=f"{ALICE}, {BOB}, {CAROL}", hours="", premium="initech.com",
                      premium_pool=f"{BOB}, {CAROL}", premium_first_response_minutes=15,
                      **extra)


def test_premium_accounts_go_to_the_premium_pool_by_round_robin_with_a_shorter_target() -> None:
    store = premium_store()
    write = writer(store)
    now = utc("2026-11-27 10:00")
    owners = [write(f"u{n}@initech.com", now).owner for n in range(4)]
    assert sorted(owners) == [BOB, BOB, CAROL, CAROL]
    outcome = write("u9@initech.com", now)
    assert float(store.thread(outcome.ref)["due"]) == now + 15 * 60
    others = [write(f"c{n}@globex.com", now) for n in range(3)]
    assert {o.owner for o in others} == {ALICE, BOB, CAROL}  # the whole pool, as before
    assert float(store.thread(others[0].ref)["due"]) == now + 60 * 60
    (new,) = [e for e in store.events(outcome.ref) if e["event"] == "new"]
    assert new["why"] == ("new thread from premium account initech.com, next in the premium "
                          "pool's round-robin")


def test_premium_falls_back_to_the_whole_pool() -> None:
    store = premium_store(away=f"{BOB}, {CAROL}")
    assert writer(store)("u1@initech.com", utc("2026-11-27 10:00")).owner == ALICE


def test_first_responses_count_working_time() -> None:
    store = make_store(pool=ALICE, hours=f"{ALICE}=Europe/Berlin 09-17 Mon-Fri",
                       trusted_authserv_id="mx.acme.test")
    write = writer(store)
    friday = utc("2026-11-27 15:30")  # 16:30 in Berlin: half an hour before the weekend
    first = write("jane@globex.com", friday)
    write(ALICE, utc("2026-11-30 09:00"), subject=f"Re: [CS-{first.ref}] Question",
          headers="Authentication-Results: mx.acme.test; dmarc=pass header.from=acme.com\r\n")
    figures = report.build(store, date(2026, 11, 27), date(2026, 12, 1))
    (alice,) = figures.csms
    assert alice.replies == 1
    assert alice.median_first_response_minutes == 90  # not the 65 hours of the weekend
    (row,) = status(store, utc("2026-11-30 09:00"))
    assert row.median_first_response_minutes == 90  # `status` counts the same way


def test_a_public_holiday_holds_new_threads_like_a_weekend() -> None:
    store = make_store(pool=ALICE, hours=f"{ALICE}=Europe/Berlin 09-17 Mon-Fri holidays=DE-BE")
    write = writer(store)
    labour_day = utc("2026-05-01 09:00")  # Friday, 11:00 in Berlin: a holiday
    held = write("jane@globex.com", labour_day)
    assert held.state == "held"
    assert "overflow" not in owed_kinds(store, held)  # the calendar, not a full pool
    assert store.release_held(now=utc("2026-05-02 09:00"))[0] == []  # Saturday
    monday = utc("2026-05-04 07:00")  # 09:00 in Berlin
    released, _ = store.release_held(now=monday)
    assert [(r.ref, r.owner) for r in released] == [(held.ref, ALICE)]
    assert float(store.thread(held.ref)["due"]) == monday + 3600
