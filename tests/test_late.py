"""A thread past its first-response target stays "overdue now" until someone answers:
escalated to a colleague, held with nobody to take it, or released to a CSM who came back.
Status, the page and /metrics count it from one reader (`poolstatus.late`)."""

from __future__ import annotations

import time

import pytest

from csm_router.lead import poolstatus, statuspage
from csm_router.lead.metrics import RedisCollector
from csm_router.state import pool
from csm_router.state.store import Store, key
from test_store import ALICE, BOB, CAROL, NOW, csm_reply, mail, make_store, route

MINUTE = 60.0


def overdue_everywhere(store: Store, now: float) -> dict[str, object]:
    """'Overdue now' as status, the page and /metrics each tell it at `now`."""
    rows = {r.address: r.overdue_now for r in poolstatus.status(store, now)}
    page = statuspage.overview(store, now)
    monkey = pytest.MonkeyPatch()
    monkey.setattr(time, "time", lambda: now)
    try:
        families = {f.name: f for f in RedisCollector(store.redis, store.settings).collect()}
    finally:
        monkey.undo()
    gauge = {s.labels["csm"]: s.value for s in families["csm_router_overdue_threads"].samples}
    held = families["csm_router_held_overdue_threads"].samples[0].value
    return {"status": rows, "metrics": gauge, "metrics_held": held,
            "page_owned": page["overdue_total"], "page_held": page["held_late"],
            "page_total": page["overdue_now"]}


def test_an_escalated_thread_stays_overdue_with_the_colleague_until_answered() -> None:
    store = make_store()
    ref = route(store, mail()).ref or 0  # Alice, due in an hour
    out = store.sweep(NOW + 61 * MINUTE)
    assert [e["owner"] for e in out["escalations"]] == [BOB]
    assert store.redis.zscore(key("late"), ref) == NOW + 60 * MINUTE  # the due time missed
    seen = overdue_everywhere(store, NOW + 62 * MINUTE)
    assert seen["status"] == {ALICE: 0, BOB: 1, CAROL: 0}
    assert seen["metrics"] == {ALICE: 0, BOB: 1, CAROL: 0}
    assert (seen["page_owned"], seen["page_held"], seen["page_total"]) == (1, 0, 1)
    csm_reply(store, BOB, ref, "Sorry for the wait.", now=NOW + 70 * MINUTE)
    seen = overdue_everywhere(store, NOW + 71 * MINUTE)
    assert seen["status"] == {ALICE: 0, BOB: 0, CAROL: 0}
    assert seen["page_total"] == 0
    assert store.redis.zcard(key("late")) == 0


def test_a_stranded_thread_is_overdue_and_held_and_stays_overdue_once_released() -> None:
    store = make_store()
    for csm in (BOB, CAROL):
        pool.set_away(store, csm)
    ref = route(store, mail()).ref or 0
    assert store.sweep(NOW + 61 * MINUTE)["held"][0]["ref"] == ref
    seen = overdue_everywhere(store, NOW + 2 * 60 * MINUTE)
    assert seen["status"] == {ALICE: 0, BOB: 0, CAROL: 0}
    assert (seen["metrics_held"], seen["page_held"], seen["page_total"]) == (1, 1, 1)
    assert poolstatus.held_count(store) == 1
    # Alice leaves on holiday; days later Bob is back: the thread is his, first out, and
    # still late for its customer.
    pool.set_away(store, ALICE)
    pool.set_back(store, BOB)
    released, _ = store.release_held(NOW + 3 * 24 * 60 * MINUTE, limit=10)
    assert [(r.ref, r.owner) for r in released] == [(ref, BOB)]
    seen = overdue_everywhere(store, NOW + 3 * 24 * 60 * MINUTE + 1)
    assert seen["status"] == {ALICE: 0, BOB: 1, CAROL: 0}
    assert (seen["metrics_held"], seen["page_owned"], seen["page_total"]) == (0, 1, 1)
    csm_reply(store, BOB, ref, "Here it is.", now=NOW + 3 * 24 * 60 * MINUTE + 60)
    assert overdue_everywhere(store, NOW + 3 * 24 * 60 * MINUTE + 120)["page_total"] == 0


def test_a_thread_held_on_arrival_is_overdue_once_it_has_waited_past_the_target() -> None:
    store = make_store()
    for csm in (ALICE, BOB, CAROL):
        pool.set_away(store, csm)
    outcome = route(store, mail())
    assert outcome.state == "held"
    assert overdue_everywhere(store, NOW + 59 * MINUTE)["page_total"] == 0
    seen = overdue_everywhere(store, NOW + 61 * MINUTE)
    assert (seen["metrics_held"], seen["page_held"], seen["page_total"]) == (1, 1, 1)
