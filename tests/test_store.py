"""The Redis scripts: smooth weighted round-robin, away, capacity, holding and hand-out."""

from __future__ import annotations

import itertools
from collections import Counter

import fakeredis
import pytest

from csm_router.config import Settings, load_settings
from csm_router.core.auth import reply_address, verify_sender
from csm_router.core.decide import decide
from csm_router.core.message import Inbound, parse
from csm_router.lead import poolstatus
from csm_router.runtime import record_decision
from csm_router.state import pool
from csm_router.state.store import Outcome, Store, key, message_key

ALICE, BOB, CAROL = "alice@acme.com", "bob@acme.com", "carol@acme.com"
NOW = 1_800_000_000.0
_ids = itertools.count(1)
# What the receiving server writes above a CSM's own mail: without it the CSM steers nothing.
GENUINE = "Authentication-Results: mx; dmarc=pass header.from=acme.com\r\n"


def settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "alias": "Acme Customer Success <success@acme.com>",
        "pool": "Alice <alice@acme.com>*2, Bob <bob@acme.com>, Carol <carol@acme.com>",
        "away": "",
        "max_open_per_csm": 0,
    }
    return load_settings(**(values | overrides))


def make_store(**overrides: object) -> Store:
    store = Store(fakeredis.FakeRedis(), settings(**overrides))
    store.ensure_sequence()
    return store


def mail(sender: str = "jane@globex.com", subject: str = "Question", extra: str = "") -> Inbound:
    n = next(_ids)
    return parse(
        f"From: {sender}\r\nTo: success@acme.com\r\nSubject: {subject}\r\n"
        f"Message-ID: <m{n}@client.example>\r\n{extra}\r\nHello\r\n".encode()
    )


def route(store: Store, msg: Inbound, now: float = NOW) -> Outcome:
    """What the router does with one message, minus IMAP and the queues."""
    decision = decide(msg, store.snapshot(msg, now, verdict=verify_sender(msg, "mx")))
    return record_decision(store, message_key(msg, msg.raw), msg, decision, now)


def owners(store: Store, count: int) -> list[str | None]:
    return [route(store, mail(f"c{i}@c{i}.com")).owner for i in range(count)]


def test_smooth_weighted_round_robin_sequence() -> None:
    store = make_store()
    sequence = owners(store, 12)
    assert sequence == [ALICE, BOB, CAROL, ALICE] * 3  # nginx's smooth order for 2:1:1
    assert Counter(sequence) == {ALICE: 6, BOB: 3, CAROL: 3}


def test_heavy_weight_is_spread_not_bunched() -> None:
    store = make_store(pool="a@acme.com*5, b@acme.com, c@acme.com")
    sequence = owners(store, 7)
    assert sequence == ["a@acme.com", "a@acme.com", "b@acme.com", "a@acme.com",
                        "c@acme.com", "a@acme.com", "a@acme.com"]


def test_away_csm_is_skipped_and_gains_no_credit() -> None:
    store = make_store()
    pool.set_away(store, ALICE)
    assert Counter(owners(store, 6)) == {BOB: 3, CAROL: 3}
    pool.set_back(store, ALICE)
    assert owners(store, 4) == [ALICE, BOB, CAROL, ALICE]


def test_away_until_a_time_expires_by_itself() -> None:
    store = make_store()
    pool.set_away(store, ALICE, until=NOW + 60)
    assert ALICE not in owners(store, 4)
    late = [route(store, mail(f"l{i}@late.com"), now=NOW + 61).owner for i in range(4)]
    assert ALICE in late


def test_away_from_the_environment_counts() -> None:
    store = make_store(away="bob@acme.com")
    assert BOB not in owners(store, 8)


def test_capacity_full_pool_holds_then_hands_out_when_room_frees() -> None:
    store = make_store(max_open_per_csm=1)
    assert Counter(owners(store, 3)) == {ALICE: 1, BOB: 1, CAROL: 1}
    held = route(store, mail("late@late.com"))
    assert (held.state, held.owner, held.followup.overflow) == ("held", None, held.ref)
    again = route(store, mail("late@late.com", f"Re: [CS-{held.ref}] Question"))
    assert (again.state, again.ref, again.followup.overflow) == ("held", held.ref, None)
    assert store.release_held(NOW) == ([], [])

    store.redis.srem(key("open", BOB), 1002)  # Bob's thread closes: room for one
    (released,), owed = store.release_held(NOW)
    assert (released.ref, released.owner) == (held.ref, BOB)
    assert len(released.messages) == 2  # both held messages go out to Bob
    assert len(owed) == 2  # owed in the same script that handed the thread out
    assert store.message(released.messages[0])["state"] == "decided"
    assert poolstatus.held_count(store) == 0


def test_nobody_available_then_one_back() -> None:
    store = make_store()
    for csm in (ALICE, BOB, CAROL):
        pool.set_away(store, csm)
    outcome = route(store, mail())
    assert outcome.state == "held"
    pool.set_back(store, CAROL)
    assert [(r.ref, r.owner) for r in store.release_held(NOW)[0]] == [(outcome.ref, CAROL)]


def test_same_message_twice_is_recorded_once() -> None:
    store = make_store()
    msg = mail()
    first = route(store, msg)
    second = route(store, msg)
    assert (first.status, second.status) == ("new", "dup")
    assert second.ref == first.ref and second.owner == first.owner
    assert store.redis.get(key("seq")) == b"1001"


def test_reply_headers_join_the_thread() -> None:
    store = make_store()
    first = mail()
    one = route(store, first)
    two = route(store, mail(extra=f"In-Reply-To: {first.message_id}\r\n"))
    assert (two.ref, two.owner, two.new_thread) == (one.ref, one.owner, False)


def test_csm_reply_records_first_response_and_takes_ownership() -> None:
    store = make_store()
    one = route(store, mail())
    assert one.owner == ALICE
    reply = route(store, mail(CAROL, f"Re: [CS-{one.ref}] Question", GENUINE), now=NOW + 300)
    assert (reply.state, reply.owner) == ("done", CAROL)
    thread = store.thread(one.ref or 0)
    assert thread["owner"] == CAROL and float(thread["first_response"]) == NOW + 300
    (span,) = store.redis.lrange(key("stats", "first-response", CAROL), 0, -1)
    assert [float(t) for t in span.split(b":")] == [NOW, NOW + 300]  # opened, answered
    assert store.redis.smembers(key("open", ALICE)) == set()
    rows = {r.address: r for r in poolstatus.status(store, NOW + 300)}
    assert rows[CAROL].open == 1 and rows[CAROL].median_first_response_minutes == 5.0


def test_closed_thread_reopens_with_its_owner_and_a_new_clock() -> None:
    store = make_store()
    one = route(store, mail())
    store.redis.hset(key("thread", one.ref), mapping={"state": "closed", "due": ""})
    again = route(store, mail(subject=f"Re: [CS-{one.ref}] Question"), now=NOW + 999)
    assert (again.ref, again.owner) == (one.ref, one.owner)
    thread = store.thread(one.ref or 0)
    assert thread["state"] == "open"
    assert float(thread["due"]) == NOW + 999 + 60 * 60


def test_reassign_moves_open_thread_and_history() -> None:
    store = make_store()
    one = route(store, mail())
    result = store.reassign(one.ref or 0, BOB, "by an admin")
    assert result["previous"] == ALICE
    assert store.redis.smembers(key("open", BOB)) == {b"1001"}
    assert [e["event"] for e in store.events(one.ref or 0)] == ["new", "reassigned"]


def test_checkpoint_only_moves_forward_and_resets_on_new_uidvalidity() -> None:
    store = make_store()
    store.advance_checkpoint("box", 7, 10)
    store.advance_checkpoint("box", 7, 4)
    assert store.checkpoint("box") == (7, 10)
    store.advance_checkpoint("box", 8, 3)
    assert store.checkpoint("box") == (8, 3)


def test_signature_tag_is_stable_and_unique() -> None:
    store = make_store()
    alice = pool.signature_tag(store, ALICE)
    assert pool.signature_tag(store, ALICE) == alice
    assert pool.signature_tag(store, BOB) != alice
    with pytest.raises(pool.PoolError, match="not in ROUTER_POOL"):
        pool.signature_tag(store, "eve@evil.example")


# -- commands and the first-response clock ----------------------------------------------

def csm_reply(store: Store, csm: str, ref: int, body: str, now: float = NOW) -> Outcome:
    n = next(_ids)
    msg = parse(
        f"From: {csm}\r\nTo: jane@globex.com\r\nCc: success@acme.com\r\n{GENUINE}"
        f"Subject: Re: [CS-{ref}] Question\r\nMessage-ID: <r{n}@acme.com>\r\n\r\n{body}\r\n"
        .encode()
    )
    return route(store, msg, now)


def support_store() -> Store:
    return make_store(support_address="support@acme.com")


def test_close_parks_the_thread_and_stops_its_clock() -> None:
    store = support_store()
    one = route(store, mail())
    ref = one.ref or 0
    assert store.redis.zscore(key("due"), ref) == NOW + 3600
    closed = csm_reply(store, ALICE, ref, "#close")
    assert closed.state == "decided" and closed.followup.notice is not None
    assert store.thread(ref)["state"] == "closed"
    assert store.redis.zscore(key("due"), ref) is None
    assert store.redis.scard(key("open", ALICE)) == 0


def test_support_command_hands_over_the_last_customer_message() -> None:
    store = support_store()
    first = route(store, mail())
    ref = first.ref or 0
    last = mail(subject=f"Re: [CS-{ref}] Question")
    route(store, last)
    out = csm_reply(store, ALICE, ref, "#support")
    assert out.followup.support == message_key(last, last.raw)
    assert store.thread(ref)["state"] == "support"
    # The customer's next message follows the thread to Support.
    after = route(store, mail(subject=f"Re: [CS-{ref}] Question"))
    assert after.followup.support is not None and after.owner == ALICE


def test_reassign_command_moves_ownership_and_forwards() -> None:
    store = support_store()
    one = route(store, mail())
    out = csm_reply(store, ALICE, one.ref or 0, "#reassign carol@acme.com")
    assert (out.followup.owner, len(out.followup.deliver)) == (CAROL, 1)
    assert store.thread(one.ref or 0)["owner"] == CAROL


def test_a_refused_command_changes_nothing_but_answers() -> None:
    store = support_store()
    one = route(store, mail())
    out = csm_reply(store, ALICE, one.ref or 0, "#reassign dave@acme.com")
    assert out.followup.notice is not None and "not in the pool" in out.followup.notice["text"]
    assert store.thread(one.ref or 0)["owner"] == ALICE


def test_sweep_reminds_once_then_escalates_once() -> None:
    store = support_store()
    one = route(store, mail())
    ref = one.ref or 0
    # The sweep also answers threads it held or closed (tests/test_quiet_and_capacity.py).
    nothing = {"reminders": [], "escalations": [], "held": [], "closed": [], "owed": []}
    assert store.sweep(NOW + 10 * 60) == nothing
    reminded = store.sweep(NOW + 46 * 60)
    (reminder,) = reminded["reminders"]
    assert (reminder["ref"], reminder["owner"]) == (ref, ALICE)
    assert [o.split("-")[0] for o in reminded["owed"]] == ["remind"]
    assert store.sweep(NOW + 50 * 60)["reminders"] == []
    escalated = store.sweep(NOW + 61 * 60)
    (escalation,) = escalated["escalations"]
    assert (escalation["previous"], escalation["owner"]) == (ALICE, BOB)
    assert store.thread(ref)["owner"] == BOB
    assert [o.split("-")[0] for o in escalated["owed"]] == ["deliver"]  # no lead to tell
    assert store.sweep(NOW + 62 * 60) == nothing
    # The new owner has a clock of their own: reminded, then escalated in turn.
    (reminder,) = store.sweep(NOW + 107 * 60)["reminders"]
    assert reminder["owner"] == BOB
    (escalation,) = store.sweep(NOW + 122 * 60)["escalations"]
    assert (escalation["previous"], escalation["owner"]) == (BOB, CAROL)


def test_an_answer_before_the_target_means_no_escalation() -> None:
    store = support_store()
    one = route(store, mail())
    csm_reply(store, ALICE, one.ref or 0, "Here is how.", now=NOW + 30 * 60)
    swept = store.sweep(NOW + 500 * 60)
    assert (swept["reminders"], swept["escalations"], swept["owed"]) == ([], [], [])


def test_a_second_delivery_of_the_same_mail_is_the_same_message() -> None:
    raw = (b"From: jane@globex.com\r\nSubject: Hi\r\nMessage-ID: <same@globex.com>\r\n"
           b"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\nHello\r\n")
    again = b"Received: from mx2 by mx1; Mon, 23 Nov 2026 10:00:01 +0000\r\n" + raw
    assert message_key(parse(raw), raw) == message_key(parse(again), again)
    # The MTA's LMTP copy and the stored one may end in different line breaks.
    stored = again.replace(b"\r\n", b"\n") + b"\n"
    assert message_key(parse(raw), raw) == message_key(parse(stored), stored)


def test_another_mail_reusing_a_message_id_is_not_dropped() -> None:
    store = make_store()
    first = mail(extra="")
    reused = parse(first.raw.replace(b"Hello", b"A different question"))
    assert reused.message_id == first.message_id
    assert route(store, first).status == "new"
    assert route(store, reused).status == "new"


def test_message_records_and_links_expire_long_after_any_reply() -> None:
    store = make_store()
    msg = mail()
    route(store, msg)
    for name in (key("msg", message_key(msg, msg.raw)), key("msgid", msg.message_id)):
        assert 399 * 86400 < store.redis.ttl(name) <= 400 * 86400


def test_a_stranger_quoting_a_reference_starts_a_matter_of_their_own() -> None:
    store = make_store()
    one = route(store, mail("jane@globex.com", "Renewal"))
    store.redis.hset(key("thread", one.ref or 0), "state", "closed")
    stranger = route(store, mail("eve@initech.com", f"Re: [CS-{one.ref}] Renewal"))
    assert stranger.ref != one.ref and stranger.new_thread
    assert "CS-1001, another customer's thread" in store.message(
        next(iter(store.thread_messages(stranger.ref or 0))))["why"]
    assert store.thread(one.ref or 0)["state"] == "closed"  # not reopened by the stranger
    assert len(store.thread_messages(one.ref or 0)) == 1  # the stranger's mail is not in it


def test_a_stranger_answering_a_customers_message_id_does_not_join_its_thread() -> None:
    store = make_store()
    first = mail("jane@globex.com", "Renewal")
    one = route(store, first)
    reply = mail("eve@initech.com", "Re: Renewal", f"In-Reply-To: {first.message_id}\r\n")
    assert route(store, reply).ref != one.ref


def test_a_colleague_at_the_customers_domain_joins_the_thread() -> None:
    store = make_store()
    one = route(store, mail("jane@globex.com", "Renewal"))
    colleague = route(store, mail("bob@eu.globex.com", f"Re: [CS-{one.ref}] Renewal"))
    assert (colleague.ref, colleague.owner) == (one.ref, one.owner)


def test_two_customers_of_one_mail_provider_are_strangers() -> None:
    store = make_store()
    one = route(store, mail("jane@gmail.com", "Renewal"))
    other = route(store, mail("eve@gmail.com", f"Re: [CS-{one.ref}] Renewal"))
    assert other.ref != one.ref
    again = route(store, mail("jane@gmail.com", f"Re: [CS-{one.ref}] Renewal"))
    assert again.ref == one.ref


def test_lookups_per_message_are_capped() -> None:
    store = make_store()
    refs = " ".join(f"<r{n}@spam.example>" for n in range(5000))
    msg = mail("eve@initech.com", "Hi", f"References: {refs}\r\n")
    pipe_calls: list[int] = []
    real_pipeline = store.redis.pipeline

    def counting_pipeline(*args: object, **kwargs: object) -> object:
        pipe = real_pipeline(*args, **kwargs)  # type: ignore[arg-type]
        real_execute = pipe.execute

        def execute(*a: object, **k: object) -> object:
            pipe_calls.append(len(pipe.command_stack))
            return real_execute(*a, **k)  # type: ignore[arg-type]

        pipe.execute = execute  # type: ignore[method-assign]
        return pipe

    store.redis.pipeline = counting_pipeline  # type: ignore[method-assign]
    store.snapshot(msg, NOW)
    assert pipe_calls and max(pipe_calls) <= 30


def test_a_closed_thread_ends_after_the_retention_and_a_reopened_one_is_kept() -> None:
    store = make_store(support_address="support@acme.com", retention_days=30)
    one = route(store, mail())
    ref = one.ref or 0
    thread_keys = [key("thread", ref), key("thread", ref, "events"), key("thread", ref, "msgs")]
    assert all(store.redis.ttl(k) == -1 for k in thread_keys)  # open: kept
    csm_reply(store, ALICE, ref, "Done.\n#close", now=NOW + 60)
    assert all(0 < store.redis.ttl(k) <= 30 * 86400 for k in thread_keys)
    route(store, mail(subject=f"Re: [CS-{ref}] Question"), now=NOW + 120)  # reopened
    assert all(store.redis.ttl(k) == -1 for k in thread_keys)
    assert 0 < store.redis.ttl(key("customer", "jane@globex.com")) <= 30 * 86400
    assert 0 < store.redis.ttl(key("daily", "2027-01-15")) <= 30 * 86400



def test_nothing_a_message_leaves_in_redis_outlives_a_short_retention() -> None:
    """A retention of a fraction of a day bounds every key a message leaves behind, so an
    accelerated month (bench/soak.py) sees Redis level off as a real year would."""
    store = make_store(retention_days=0.001)  # 86.4 s
    msg = mail()
    msgkey = message_key(msg, msg.raw)
    decision = decide(msg, store.snapshot(msg, NOW, verdict=verify_sender(msg, "mx")))
    record_decision(store, msgkey, msg, decision, NOW, raw=msg.raw)
    for name in (key("msg", msgkey), key("msgid", msg.message_id), key("raw", msgkey)):
        assert 0 < store.redis.ttl(name) <= 87, name
    assert store.settings.kept(90 * 86400) == 86


SECRET = "correct-horse-battery-staple"


def reply_with(store: Store, csm: str, ref: int, cc: str, body: str) -> Outcome:
    msg = parse(f"From: {csm}\r\nTo: jane@globex.com\r\nCc: {cc}\r\n"
                f"Subject: Re: [CS-{ref}] Question\r\nMessage-ID: <s{next(_ids)}@acme.com>\r\n"
                f"\r\n{body}\r\n".encode())
    return route(store, msg, NOW + 60)


def test_without_authentication_results_a_csms_own_reply_address_proves_the_reply() -> None:
    store = make_store(reply_secret=SECRET)
    one = route(store, mail())
    ref, owner = one.ref or 0, one.owner or ""
    own = reply_address("success@acme.com", SECRET, owner, ref)
    assert reply_with(store, owner, ref, own, "Done.\n#close").state == "decided"
    assert store.thread(ref)["state"] == "closed"


@pytest.mark.parametrize("cc", ["success@acme.com", "other"])
def test_a_reply_address_of_another_thread_or_none_proves_nothing(cc: str) -> None:
    store = make_store(reply_secret=SECRET)
    one = route(store, mail())
    two = route(store, mail("joe@initech.com"))
    ref, owner = one.ref or 0, one.owner or ""
    if cc == "other":  # the customer of thread two saw this reply address and replays it
        cc = reply_address("success@acme.com", SECRET, owner, two.ref or 0)
    assert reply_with(store, owner, ref, cc, "#close").state == "quarantined"
    assert store.thread(ref)["state"] == "open"


def test_away_until_a_time_already_past_is_refused() -> None:
    store = make_store()
    with pytest.raises(pool.PoolError, match="in the past"):
        pool.set_away(store, BOB, NOW - 60, now=NOW)
    pool.set_away(store, BOB, NOW + 60, now=NOW)
    assert BOB in store.away_now(store.redis.hgetall(key("away")), NOW)


@pytest.mark.parametrize("account", ["https://initech.com", "initech.com/path", "initech"])
def test_an_account_is_a_bare_domain(account: str) -> None:
    with pytest.raises(pool.PoolError, match="customer domain"):
        pool.assign_onboarding(make_store(), account, BOB, 30, NOW)


def test_a_command_repeating_the_customers_mail_is_answered_not_obeyed() -> None:
    store = support_store()
    ask = parse(b"From: jane@globex.com\r\nTo: success@acme.com\r\nSubject: Question\r\n"
                b"Message-ID: <ask@globex.com>\r\n\r\nPlease move me.\r\n"
                b"#reassign carol@acme.com\r\n")
    one = record_decision(store, message_key(ask, ask.raw), ask,
                          decide(ask, store.snapshot(ask, NOW)), NOW, raw=ask.raw)
    ref = one.ref or 0
    # A CSM's own earlier mail is not the customer's: its quoted "#close" blocks nothing.
    bob = parse(f"From: {BOB}\r\nTo: jane@globex.com\r\n{GENUINE}Subject: Re: [CS-{ref}] Q\r\n"
                f"Message-ID: <b1@acme.com>\r\n\r\nNoted.\r\n\r\n> #close\r\n".encode())
    snap = store.snapshot(bob, NOW, verdict=verify_sender(bob, "mx"))
    record_decision(store, message_key(bob, bob.raw), bob, decide(bob, snap), NOW, raw=bob.raw)
    assert len(store.thread_messages(ref)) == 2
    assert store.customer_commands(ref) == {"#reassign carol@acme.com"}
    out = csm_reply(store, ALICE, ref, "#reassign carol@acme.com")
    assert out.followup.notice is not None
    assert "customer's mail has the same line" in out.followup.notice["text"]
    assert store.thread(ref)["owner"] == ALICE
    assert csm_reply(store, ALICE, ref, "#close").state == "decided"
    assert store.thread(ref)["state"] == "closed"


def test_a_threads_history_is_what_came_before_the_message_newest_last() -> None:
    store = make_store()
    first = mail()
    one = record_decision(store, message_key(first, first.raw), first,
                          decide(first, store.snapshot(first, NOW)), NOW, raw=first.raw)
    ref = one.ref or 0
    for n in (2, 3):
        later = mail(subject=f"Re: [CS-{ref}] Question")
        record_decision(store, message_key(later, later.raw), later,
                        decide(later, store.snapshot(later, NOW + n)), NOW + n, raw=later.raw)
    keys = store.thread_messages(ref)
    raws = [store.load_raw(k) for k in keys]
    assert len(keys) == 3 and all(raws)
    assert store.thread_history(keys[2]) == raws[:2]
    assert store.thread_history(keys[2], limit=1) == raws[1:2]
    assert store.thread_history(keys[0]) == []
    store.redis.delete(key("raw", keys[0]))  # expired: skipped, the rest still told
    assert store.thread_history(keys[2]) == raws[1:2]
