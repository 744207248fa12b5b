"""`csm-router forget`: after it, a scan of every Redis key and value finds no trace of the
person, while everyone else's threads, the pool's counts and the aggregate figures stand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis

from csm_router.config import load_settings
from csm_router.lead import report
from csm_router.runtime import Runtime
from csm_router.state.forget import forget, handle, traces
from csm_router.state.store import Store, key
from support.routing import Mail

ALICE, BOB = "alice@acme.com", "bob@acme.com"
JANE, MAX, GMAIL = "jane@globex.com", "max@globex.com", "jane.doe@gmail.com"
NOW = 1_800_000_000.0


def make_runtime(**settings: Any) -> Runtime:
    values: dict[str, Any] = {"alias": "success@acme.com", "pool": f"{ALICE}, {BOB}",
                              "away": "", "max_open_per_csm": 0, "affinity_days": 30,
                              "overflow_address": "cs-lead@acme.com",
                              "support_address": "support@acme.com"}
    rt = Runtime.from_settings(load_settings(**(values | settings)), fakeredis.FakeRedis())
    rt.store.ensure_sequence()
    return rt


def busy_store() -> tuple[Store, dict[str, int]]:
    """Jane's threads (one answered by a reply, one with Support, one of hers held), Max's
    at the same company, a gmail.com customer, and their sends still owed."""
    rt = make_runtime()
    store, mail = rt.store, Mail(rt.store, rt.support_rules)
    jane = mail(f"Jane Doe <{JANE}>", NOW, subject="Export")
    mail(f"Jane Doe <{JANE}>", NOW + 60, reply_to="<m1@example.com>")
    technical = mail(JANE, NOW + 120, subject="API errors",
                     body="Since this morning every call to your API returns HTTP 500 and "
                          "our integration fails with a timeout. Stack trace attached.")
    maxs = mail(f"Max <{MAX}>", NOW + 180, subject="Invoice",
                headers=f"Cc: Jane Doe <{JANE}>\r\n")
    gmail = mail(GMAIL, NOW + 240, subject="Hello")
    # One of Jane's sends failed for good: a dead letter.
    (entry,) = [e for e in jane.owed if e.startswith("deliver")][:1]
    store.redis.hset(key("outbox", "e", entry), mapping={"state": "dead", "error": "550"})
    store.redis.zadd(key("dead"), {entry: NOW})
    return store, {"jane": jane.ref, "technical": technical.ref, "max": maxs.ref,
                   "gmail": gmail.ref}


def test_after_forget_no_key_or_value_names_the_person() -> None:
    store, refs = busy_store()
    assert traces(store.redis, JANE)  # she is everywhere to begin with
    done = forget(store, JANE)
    assert traces(store.redis, JANE) == []
    assert done.threads == sorted([refs["jane"], refs["technical"]])
    assert done.messages == 3 and done.sends >= 3
    # Nothing was sent yet (no worker ran): no inbox holds a copy; Support had one thread.
    assert done.forwarded_to == set() and done.handed_to_support
    assert store.thread(refs["jane"]) == {} and store.events(refs["jane"]) == []
    open_refs = {int(r) for csm in (ALICE, BOB) for r in store.redis.smembers(key("open", csm))}
    assert refs["jane"] not in open_refs and refs["max"] in open_refs
    assert forget(store, JANE).threads == []  # again: nothing left to find


def test_everyone_else_and_the_aggregate_figures_stand() -> None:
    store, refs = busy_store()
    day = datetime.fromtimestamp(NOW, UTC).date()
    before = report.build(store, day, day + timedelta(days=1))
    forget(store, JANE)
    after = report.build(store, day, day + timedelta(days=1))
    assert after.threads == before.threads  # counts that name nobody stay
    assert {c.address: c.taken for c in after.csms} == {c.address: c.taken for c in before.csms}
    touched = {a.account: a.csms for a in after.accounts}
    assert "globex.com" in touched  # Max is still a customer there
    assert store.thread(refs["max"])["customer"] == MAX
    assert store.thread(refs["gmail"])["customer"] == GMAIL
    assert traces(store.redis, MAX) != [] and traces(store.redis, GMAIL) != []


def test_a_free_mail_customer_is_forgotten_with_their_account() -> None:
    store, refs = busy_store()
    assert store.redis.exists(key("served", GMAIL)) and store.redis.exists(key("account", GMAIL))
    forget(store, GMAIL)
    assert traces(store.redis, GMAIL) == []
    assert not store.redis.exists(key("served", GMAIL))
    assert store.thread(refs["jane"])["customer"] == JANE


def test_the_request_is_named_without_the_address() -> None:
    assert JANE not in handle(JANE) and len(handle(JANE)) == 12
    assert handle(JANE.upper()) == handle(JANE)
