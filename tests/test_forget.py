"""`csm-router forget`: after it, a scan of every Redis key and value finds no trace of the
person, while everyone else's threads, the pool's counts and the aggregate figures stand."""

from __future__ import annotations

import base64
import email
import re
from datetime import UTC, datetime, timedelta
from email.policy import compat32
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from csm_router.config import load_settings
from csm_router.core.erasure import ERASED, mentions, redact_message
from csm_router.demo.relay import RecordingSmtp
from csm_router.lead import report
from csm_router.runtime import Runtime
from csm_router.sends import jobs
from csm_router.state.forget import forget, handle
from csm_router.state.store import Store, key
from support.erasure import scan, unpacked, whole
from support.routing import Mail
from support.runtime import worker_runtime

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
    assert scan(store.redis, JANE)  # she is everywhere to begin with
    done = forget(store, JANE)
    assert scan(store.redis, JANE) == []
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
    assert scan(store.redis, MAX) != [] and scan(store.redis, GMAIL) != []


def test_a_free_mail_customer_is_forgotten_with_their_account() -> None:
    store, refs = busy_store()
    assert store.redis.exists(key("served", GMAIL)) and store.redis.exists(key("account", GMAIL))
    forget(store, GMAIL)
    assert scan(store.redis, GMAIL) == []
    assert not store.redis.exists(key("served", GMAIL))
    assert store.thread(refs["jane"])["customer"] == JANE


def test_only_the_whole_address_is_forgotten() -> None:
    rt = make_runtime()
    mail = Mail(rt.store, rt.support_rules)
    ann = mail("Ann <ann@globex.com>", NOW, subject="Mine")
    joann = mail("Joann <joann@globex.com>", NOW + 60, subject="Mine too",
                 headers="Cc: ann@globex.com.au, Ann Lee <ANN@globex.com>\r\n")
    forget(rt.store, "ann@globex.com")
    assert rt.store.thread(ann.ref) == {}
    assert rt.store.thread(joann.ref)["customer"] == "joann@globex.com"
    assert rt.redis.zrange(key("customer", "joann@globex.com"), 0, -1)
    kept = rt.redis.get(key("raw", rt.store.thread(joann.ref)["first_msg"]))
    assert b"From: Joann <joann@globex.com>" in kept  # the Cc'd ann@ went, joann@ stayed
    assert b"ann@globex.com.au" in kept and b"Ann Lee <" + ERASED.encode() + b">" in kept
    assert scan(rt.redis, "ann@globex.com") == []


def test_a_send_still_owed_to_another_customer_goes_out_without_the_person(
    smtp: RecordingSmtp,
) -> None:
    # Max's mail copied Jane, in its headers and in a base64 body; his forward is owed.
    body = base64.encodebytes(f"Jane ({JANE}) will join the call.\n".encode()).decode()
    raw_headers = (f"Cc: Jane Doe <{JANE}>\r\nMIME-Version: 1.0\r\n"
                   "Content-Type: text/plain; charset=utf-8\r\n"
                   "Content-Transfer-Encoding: base64\r\n")
    with worker_runtime(smtp.url, ALICE) as rt:
        mail = Mail(rt.store, rt.support_rules)
        mail(f"Jane Doe <{JANE}>", NOW, subject="Export")
        maxs = mail(f"Max <{MAX}>", NOW + 60, subject="Invoice", headers=raw_headers,
                    body=body.replace("\n", "\r\n"))
        # Lea names her only in an encoded body: no header, no plain text says so.
        mail("Lea <lea@initech.io>", NOW + 120, subject="Call",
             headers=raw_headers.split("\r\n", 1)[1], body=body.replace("\n", "\r\n"))
        done = forget(rt.store, JANE)
        assert done.redacted >= 1 and scan(rt.redis, JANE) == []
        (entry,) = [e for e in maxs.owed if e.startswith("deliver")]
        assert jobs.perform(entry).startswith("sent")
    (forward,) = [m for m in smtp.messages if "Invoice" in str(m.message["Subject"])]
    sent = forward.message.as_bytes()
    assert JANE.encode() not in sent.lower() and "Max" in str(forward.message["From"])
    carried = "".join(unpacked(sent))
    assert JANE not in carried and f"Jane ({ERASED}) will join the call." in carried


def test_the_request_is_named_without_the_address_nor_a_way_to_test_guesses() -> None:
    secret = b"the deployment's own"
    assert JANE not in handle(JANE, secret) and len(handle(JANE, secret)) == 12
    assert handle(JANE.upper(), secret) == handle(JANE, secret)
    assert handle(JANE, b"another deployment's") != handle(JANE, secret)


CORPUS_FILES = sorted(Path(__file__).resolve().parents[2].joinpath("shared", "corpus")
                      .glob("**/*.eml"))
ADDRESS = re.compile(rb"(?<![\w.+-])[\w.+-]{1,64}@[\w-]+(?:\.[\w-]+)+")


@pytest.mark.skipif(not CORPUS_FILES, reason="shared corpus not found")
def test_mail_from_other_libraries_keeps_its_shape_without_the_person() -> None:
    redacted = 0
    for path in CORPUS_FILES:
        raw = path.read_bytes()
        found = ADDRESS.findall(b" ".join(t.encode() for t in unpacked(raw)))
        if not found:
            continue
        person = found[-1].decode().lower()  # often a body's, in an encoded part
        after = redact_message(raw, mentions(person))
        assert not any(whole(person).search(t) for t in unpacked(after)), path
        redacted += after != raw
        before_msg, after_msg = (email.message_from_bytes(r, policy=compat32) for r in (raw, after))
        assert ([p.get_content_type() for p in before_msg.walk()]
                == [p.get_content_type() for p in after_msg.walk()]), path
    assert redacted > 200  # most of the corpus named someone to erase

