"""The status page and /healthz say what is true: one health verdict for both, why held
threads wait, quarantined and escalated decisions, who wrote each message of a thread and
whether its forward went out, and the lead's time zone with UTC on hover."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import fakeredis
import pytest
from starlette.testclient import TestClient

from csm_router.app.web import create_app
from csm_router.core.decide import decide
from csm_router.core.message import parse
from csm_router.lead.threadpage import entry_id
from csm_router.mail.outbound import use_templates
from csm_router.runtime import Runtime
from csm_router.state import pool
from csm_router.state.processes import ProcessBeat
from csm_router.state.store import key, message_key
from test_status_page import ALICE, BOB, CAROL, LOCAL, NOW, PASSWORD, page, settings, visible

AUTHSERV = "mx.acme.test"
GENUINE = (f"Authentication-Results: {AUTHSERV}; spf=pass smtp.mailfrom=acme.com; "
           "dkim=pass header.d=acme.com; dmarc=pass header.from=acme.com\r\n")


def runtime(**overrides: str) -> Runtime:
    rt = Runtime.from_settings(settings(**overrides), fakeredis.FakeRedis())
    rt.store.ensure_sequence()
    return rt


@pytest.fixture
def rt() -> Iterator[Runtime]:
    yield runtime(trusted_authserv_id=AUTHSERV, support_address="support@acme.com")
    use_templates(None)


def client_of(rt: Runtime, now: float = NOW) -> TestClient:
    return TestClient(create_app(rt.settings, rt.redis, clock=lambda: now), base_url=LOCAL)


def write(rt: Runtime, n: int, subject: str, at: float, *, sender: str = "",
          body: str = "How do I export the report?", headers: str = "") -> str:
    """A message decided and recorded by the real rules and scripts at `at`; its key."""
    sender = sender or f"Jane Doe {n} <jane{n}@globex{n}.com>"
    raw = (f"{headers}From: {sender}\r\nTo: success@acme.com\r\nSubject: {subject}\r\n"
           f"Message-ID: <m{n}@example.com>\r\n\r\n{body}\r\n").encode()
    msg = parse(raw)
    msgkey = message_key(msg, raw)
    rt.store.record(msgkey, msg, decide(msg, rt.store.snapshot(msg, at)), at, raw=raw)
    return msgkey


def owed_when_decided(rt: Runtime) -> None:
    """Score each owed send by when its decision owed it: the scripts score by the wall
    clock, and these tests decide at NOW, a week before."""
    for entry in rt.redis.zrange(key("outbox"), 0, -1):
        created = float(rt.redis.hget(key("outbox", "e", entry.decode()), "created"))
        rt.redis.zadd(key("outbox"), {entry: created})


def beat(rt: Runtime, role: str, at: float) -> None:
    proc = ProcessBeat(rt.redis, role, f"{role}-1", poll=30)
    proc.imap = "connected" if role == "router" else ""
    proc.beat(at)


def healthz(client: TestClient) -> tuple[int, str]:
    answer = client.get("/healthz", auth=("admin", PASSWORD))
    return answer.status_code, answer.text


def banners(markup: str) -> list[str]:
    return [visible("<body>" + b) for b in re.findall(r'<p class="banner[^"]*"[^>]*>(.*?)</p>',
                                                      markup, re.S)]


# -- one verdict for /healthz and the page ---------------------------------------------


def test_mail_owed_past_the_grace_with_no_worker_fails_healthz_and_shows_on_the_page(
    rt: Runtime
) -> None:
    beat(rt, "router", NOW - 1)
    write(rt, 1, "Export question", NOW - 120)  # its forward owed since then
    write(rt, 2, "Invoices", NOW - 90)
    write(rt, 3, "Fresh one", NOW - 10)  # within the grace: not counted yet
    owed_when_decided(rt)
    client = client_of(rt)

    status, said = healthz(client)
    assert status == 503
    assert said.splitlines() == [
        "unhealthy",
        "- no worker: 2 sends owed for 2 min, none taken: is `csm-router worker` running?"]
    assert banners(page(client)) == ["No worker: 2 sends owed for 2 min: nothing is being sent",
                                     "cannot tell whether Redis keeps its data (CONFIG GET is "
                                     "disabled): make sure it runs with appendonly yes "
                                     "(deploy/redis.conf.example)"]

    beat(rt, "worker", NOW - 2)  # a worker beats: it offers and takes whatever is due
    status, said = healthz(client)
    assert status == 200, said
    assert "no worker" not in said
    assert not [b for b in banners(page(client)) if "worker" in b]


def test_an_entry_a_dead_worker_took_is_owed_too(rt: Runtime) -> None:
    beat(rt, "router", NOW - 1)
    beat(rt, "worker", NOW - 300)  # killed five minutes ago
    write(rt, 1, "Export question", NOW - 600)
    (owed,) = [i.decode() for i in rt.redis.zrange(key("outbox"), 0, -1)]
    rt.outbox.take(owed, "worker-1:123:abcd")  # in its hands when it died
    rt.redis.hset(key("outbox", "e", owed), "started", NOW - 290)
    assert rt.redis.zscore(key("outbox"), owed) > NOW  # out of reach of offers
    status, said = healthz(client_of(rt))
    assert status == 503
    assert "- no worker: 1 send owed for 10 min" in said


def test_a_silent_router_is_a_banner_and_a_503_with_the_same_reason(rt: Runtime) -> None:
    beat(rt, "router", NOW - 180)
    beat(rt, "worker", NOW - 1)
    client = client_of(rt)
    status, said = healthz(client)
    assert status == 503
    assert "silent for 180s, over its poll interval of 30s" in said
    assert banners(page(client))[0] == "Router silent for 3 min: nothing new is being routed"
    # Without credentials the line names no login, host or pid.
    anonymous = client.get("/healthz").text
    assert "silent for 180s" in anonymous and "router-1" not in anonymous


def test_a_healthy_deployment_shows_no_red_banner(rt: Runtime) -> None:
    beat(rt, "router", NOW - 1)
    beat(rt, "worker", NOW - 1)
    write(rt, 1, "Export question", NOW - 600)
    client = client_of(rt)
    assert healthz(client)[0] == 200
    markup = page(client)
    assert '<p class="banner"' not in markup  # notes only (CONFIG is disabled here)
    assert '<p class="banner note"' in markup


# -- why held threads wait -------------------------------------------------------------


def held_line(client: TestClient) -> str:
    text = visible(page(client))
    return text.partition("Held (")[2].partition("Overdue")[0]


def test_held_threads_say_everyone_is_away_and_stay_visible_as_overdue(rt: Runtime) -> None:
    for address in (ALICE, BOB, CAROL):
        pool.set_away(rt.store, address, now=NOW - 7200)
    write(rt, 1, "Stranded", NOW - 2 * 3600)  # past the 60 min target
    write(rt, 2, "Just now", NOW - 60)
    held = held_line(client_of(rt))
    assert held.startswith("2) Waiting because everyone is away. 1 past the first-response "
                           "target: they go out first, oldest first."), held
    assert "CS-1001 2 h overdue Stranded" in held
    assert "CS-1002 1 min Just now" in held


def test_held_threads_say_when_someone_is_back_on_shift(rt: Runtime) -> None:
    # Wednesday noon: Carol works Saturdays; Alice and Bob are away.
    pool.set_away(rt.store, ALICE, now=NOW)
    pool.set_away(rt.store, BOB, until=NOW + 86400, now=NOW)
    write(rt, 1, "Nobody free", NOW - 60)
    assert held_line(client_of(rt)).startswith(
        "1) Waiting because Alice Smith and Bob Jones away; carol@acme.com off shift until "
        "Sat 09:00 UTC.")


def test_held_threads_say_nobody_is_on_shift_in_the_leads_zone() -> None:
    rt = runtime(hours=f"{ALICE}=UTC 08-10 Mon-Fri; {BOB}=UTC 08-10 Mon-Fri; "
                       f"{CAROL}=UTC 09-17 Sat; cs-lead@acme.com=Europe/Berlin 09-17 Mon-Fri")
    write(rt, 1, "After hours", NOW - 60)
    assert held_line(client_of(rt)).startswith(
        "1) Waiting because nobody on shift until Thu 09:00 CET.")


def test_held_threads_say_everyone_is_at_capacity() -> None:
    rt = runtime(max_open_per_csm="1", hours="")
    for n in range(1, 5):
        write(rt, n, f"Question {n}", NOW - 600 + n)
    assert held_line(client_of(rt)).startswith(
        "1) Waiting because everyone at capacity (1 open each).")


def test_held_threads_go_out_oldest_first_when_someone_is_back() -> None:
    rt = runtime(max_open_per_csm="1", hours="")
    for address in (ALICE, BOB, CAROL):
        pool.set_away(rt.store, address, now=NOW - 7200)
    write(rt, 1, "Oldest", NOW - 3000)
    write(rt, 2, "Middle", NOW - 2000)
    write(rt, 3, "Newest", NOW - 1000)
    pool.set_back(rt.store, BOB)  # room for one thread
    released, _ = rt.store.release_held(NOW)
    assert [(r.ref, r.owner) for r in released] == [(1001, BOB)]
    pool.set_back(rt.store, CAROL)
    released, _ = rt.store.release_held(NOW)
    assert [(r.ref, r.owner) for r in released] == [(1002, CAROL)]
    assert [int(r) for r in rt.redis.zrange(key("held"), 0, -1)] == [1003]


# -- the latest decisions ----------------------------------------------------------------


def recent(rt: Runtime) -> str:
    return visible(page(client_of(rt))).partition("Latest decisions")[2]


def test_escalations_and_holds_by_the_sweep_are_latest_decisions(rt: Runtime) -> None:
    write(rt, 1, "Late one", NOW - 2 * 3600)  # to Alice, due an hour ago
    rt.store.sweep(NOW - 60)
    lines = recent(rt)
    assert ("CS-1001 Late one escalated bob@acme.com first-response first response overdue "
            "with alice@acme.com: escalated") in lines
    assert lines.index("escalated") < lines.index("forward")  # newest first
    entry = json.loads(rt.redis.lindex(key("recent"), 0))
    assert set(entry) == {"at", "ref", "message_id", "subject", "state", "action", "owner",
                          "rule", "why"}
    for address in (ALICE, BOB, CAROL):
        pool.set_away(rt.store, address, now=NOW)
    rt.store.sweep(NOW + 3600)  # Bob's clock ran out too, and nobody can take it
    assert ("CS-1001 Late one held - first-response first response overdue with "
            "bob@acme.com: nobody available, held") in recent(rt)


def test_a_quarantined_message_shows_its_subject_reason_and_thread(rt: Runtime) -> None:
    write(rt, 1, "Export question", NOW - 600)
    # Claims to be Alice, unauthenticated, in the customer's thread.
    write(rt, 2, "Re: [CS-1001] Export question", NOW - 60, sender="Alice <alice@acme.com>")
    rt.store.record_quarantine("k3", "<m3@example.com>", "unreadable: broken MIME", NOW - 30,
                               rule="unparseable")
    lines = recent(rt)
    assert ("(subject unknown) <m3@example.com> quarantined - unparseable unreadable: "
            "broken MIME") in lines
    assert re.search(r"Re: \[CS-1001\] Export question quarantined - impersonation claims to "
                     r"be from CSM alice@acme\.com", lines), lines


# -- the thread page -----------------------------------------------------------------


def test_the_thread_page_splits_customer_mail_from_csm_replies_with_delivery(
    rt: Runtime
) -> None:
    first = write(rt, 1, "Export question", NOW - 3600)
    write(rt, 2, "Re: [CS-1001] Export question", NOW - 1800,
          sender="Alice Smith <alice@acme.com>", headers=GENUINE, body="Here is how.")
    write(rt, 3, "Re: [CS-1001] Export question", NOW - 600,
          sender="Jane Doe 1 <jane1@globex1.com>")
    # The first forward went out; the third's failed for good.
    rt.outbox.done(entry_id("deliver", first, ALICE, ""), "sent")
    (third,) = [i.decode() for i in rt.redis.zrange(key("outbox"), 0, -1)]
    rt.outbox.dead(third, "550 mailbox unavailable")

    text = visible(page(client_of(rt), "/thread/CS-1001"))
    customer = text.partition("Customer messages")[2].partition("CSM replies")[0]
    replies = text.partition("CSM replies")[2]
    assert "Export question alice@acme.com round-robin forward to alice@acme.com: sent" \
        in customer
    assert ("known-thread forward to alice@acme.com: failed (550 mailbox unavailable) "
            "<m3@example.com>") in customer
    assert "<m2@example.com>" not in customer
    assert "Re: [CS-1001] Export question alice@acme.com from-pool-csm <m2@example.com>" \
        in replies


def test_a_support_thread_names_support_and_the_last_csm(rt: Runtime) -> None:
    write(rt, 1, "Export question", NOW - 3600)  # to Alice
    write(rt, 2, "Re: [CS-1001] Export question", NOW - 1800,
          sender="Alice Smith <alice@acme.com>", headers=GENUINE, body="#support\n\nOver to them.")
    text = visible(page(client_of(rt), "/thread/CS-1001"))
    assert "owner Support (support@acme.com); last CSM alice@acme.com" in text
    assert "state support" in text


def test_times_are_the_leads_with_utc_on_hover() -> None:
    rt = runtime(hours=f"{CAROL}=UTC 09-17 Sat; cs-lead@acme.com=Europe/Berlin 09-17 Mon-Fri")
    write(rt, 1, "Export question", NOW - 3600)
    for path in ("/", "/thread/CS-1001"):
        markup = page(client_of(rt), path)
        assert ('<time datetime="2026-11-25T12:00:00Z" title="2026-11-25 12:00 UTC">'
                "2026-11-25 13:00 CET</time>") in markup, path
        assert ('<time datetime="2026-11-25T11:00:00Z" title="2026-11-25 11:00 UTC">'
                "2026-11-25 12:00 CET</time>") in markup, path
        assert "11:00 UTC</time>" not in markup


def test_a_held_message_says_so_and_its_forward_shows_once_a_reply_released_it(
    rt: Runtime
) -> None:
    for address in (ALICE, BOB, CAROL):
        pool.set_away(rt.store, address, now=NOW - 7200)
    held = write(rt, 1, "Export question", NOW - 3600)
    customer = visible(page(client_of(rt), "/thread/CS-1001")).partition(
        "Customer messages")[2].partition("CSM replies")[0]
    assert "forward: held (owed to whoever can take the thread)" in customer
    # Alice answers from her own mail: the held message is owed to her, caused by her reply.
    reply = write(rt, 2, "Re: [CS-1001] Export question", NOW - 1800,
                  sender="Alice Smith <alice@acme.com>", headers=GENUINE, body="On it.")
    rt.outbox.done(entry_id("deliver", held, ALICE, reply), "sent")
    customer = visible(page(client_of(rt), "/thread/CS-1001")).partition(
        "Customer messages")[2].partition("CSM replies")[0]
    assert "forward to alice@acme.com: sent" in customer
    assert "held" not in customer


def test_redis_losing_its_data_is_a_banner_with_when(rt: Runtime) -> None:
    beat(rt, "router", NOW - 1)
    beat(rt, "worker", NOW - 1)
    client = client_of(rt)
    assert not [b for b in banners(page(client)) if "lost" in b]  # the marker is seen
    rt.redis.delete(key("epoch"))  # a restart without persistence, a FLUSHALL
    status, said = healthz(client)
    assert status == 503
    assert "- Redis lost its data: a router numbers new threads above" in said
    assert banners(page(client))[0].startswith(
        "Redis lost its data at 2026-11-25 12:00 UTC: what was routed before is unknown")


def test_the_forwards_an_escalation_and_a_reassignment_owed_show_on_the_thread_page(
    rt: Runtime
) -> None:
    first = write(rt, 1, "Export question", NOW - 7200)  # Alice's, due an hour later
    rt.store.sweep(NOW - 3500)  # overdue: escalated to Bob, who gets a forward of it
    escalated = [i.decode() for i in rt.redis.zrange(key("outbox"), 0, -1)
                 if rt.redis.hget(key("outbox", "e", i.decode()), "kind") == b"deliver"]
    rt.outbox.done(entry_id("deliver", first, ALICE, ""), "sent")
    for entry in escalated:
        if entry != entry_id("deliver", first, ALICE, ""):
            rt.outbox.dead(entry, "550 no such user")
    rt.store.reassign(1001, CAROL, "reassigned by an admin")
    customer = visible(page(client_of(rt), "/thread/CS-1001")).partition(
        "Customer messages")[2].partition("CSM replies")[0]
    assert "forward to alice@acme.com: sent" in customer
    assert "forward to bob@acme.com: failed (550 no such user)" in customer
    assert "forward to carol@acme.com: owed" in customer
