"""Rule `known-thread`: a message in a known thread goes to its owner, or on if they can't."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from csm_router.core.decide import decide
from csm_router.core.decision import Action, Decision, Snapshot, ThreadInfo, ThreadState
from csm_router.core.message import Inbound, parse
from csm_router.core.rules import known_thread
from csm_router.runtime import Runtime, record_decision
from csm_router.state.store import key, message_key
from support.runtime import worker_runtime
from support.snapshots import SNAP

CUSTOMER = "dana@customer.example"

REPLY = parse(
    b"""\
From: Dana Customer <dana@customer.example>
To: Acme Customer Success <success@acme.com>
Subject: Re: [CS-1042] Renewal questions
Date: Tue, 03 Mar 2026 10:00:00 +0000
Message-ID: <q2@customer.example>
In-Reply-To: <fwd.1042@acme.com>
References: <q1@customer.example> <fwd.1042@acme.com>

Thanks Alice, Thursday works.

On Tue, 3 Mar 2026 at 09:30, Alice Smith <alice@acme.com> wrote:
> Hi Dana, happy to walk you through the renewal on Thursday.
> --
> Alice Smith
> Customer Success \xc2\xb7 Acme Customer Success
> success@acme.com \xc2\xb7 CSM-7KQ4XM
"""
)

# A fresh message (no reply headers, no reference) that quotes a CSM's signature.
FRESH_WITH_SIGNATURE = parse(
    b"""\
From: Dana Customer <dana@customer.example>
To: Acme Customer Success <success@acme.com>
Subject: One more question
Date: Tue, 03 Mar 2026 11:00:00 +0000
Message-ID: <q3@customer.example>

Alice, one more thing about the invoice.

> Alice Smith
> success@acme.com \xc2\xb7 CSM-7KQ4XM
"""
)


def in_thread(
    owner: str | None,
    state: ThreadState = ThreadState.OPEN,
    *,
    away: frozenset[str] = frozenset(),
) -> Snapshot:
    thread = ThreadInfo(1042, owner, state, CUSTOMER)
    return replace(SNAP, thread=thread, matched_by="reply headers", away=away)


def check(msg: Inbound, snap: Snapshot) -> Decision:
    decision = known_thread.check(msg, snap)
    assert decision is not None
    assert decision.rule == known_thread.NAME == "known-thread"
    assert decision.action is Action.FORWARD
    return decision


def test_mail_outside_any_thread_and_without_a_tag_is_not_a_known_thread() -> None:
    assert known_thread.check(REPLY, SNAP) is None


def test_reply_in_a_known_thread_goes_to_its_available_owner() -> None:
    decision = check(REPLY, in_thread("alice@acme.com"))

    assert decision.target == "alice@acme.com"
    assert decision.ref == 1042
    assert decision.why == "owner of the thread (reply headers)"


@pytest.mark.parametrize(
    "matched_by",
    ["reply headers", "subject reference [CS-1042]", "reference CS-1042 in the text"],
)
def test_reason_says_how_the_thread_was_recognised(matched_by: str) -> None:
    snap = replace(in_thread("bob@acme.com"), matched_by=matched_by)

    decision = check(REPLY, snap)

    assert decision.target == "bob@acme.com"
    assert decision.why.endswith(f"({matched_by})")


def test_reply_while_the_owner_is_away_goes_to_the_next_csm_naming_the_owner() -> None:
    decision = check(REPLY, in_thread("alice@acme.com", away=frozenset({"alice@acme.com"})))

    assert decision.target is None  # the pool hands out the next CSM
    assert decision.ref == 1042
    assert "owner alice@acme.com is away" in decision.why
    assert "reply headers" in decision.why


def test_reply_after_the_owner_left_the_pool_goes_to_the_next_csm() -> None:
    decision = check(REPLY, in_thread("dave@acme.com"))

    assert decision.target is None
    assert decision.ref == 1042
    assert "owner dave@acme.com has left the pool" in decision.why


@pytest.mark.parametrize(
    "owner", [pytest.param(None, id="no-owner"), pytest.param("alice@acme.com", id="owner-set")]
)
def test_reply_in_a_held_thread_goes_to_the_next_csm(owner: str | None) -> None:
    decision = check(REPLY, in_thread(owner, ThreadState.HELD))

    assert decision.target is None
    assert decision.ref == 1042
    assert "held thread" in decision.why


def test_open_thread_without_an_owner_is_treated_as_held() -> None:
    decision = check(REPLY, in_thread(None, ThreadState.OPEN))

    assert decision.target is None
    assert "held thread" in decision.why


def test_reply_in_a_closed_thread_reopens_it_with_its_owner() -> None:
    decision = check(REPLY, in_thread("bob@acme.com", ThreadState.CLOSED))

    assert decision.target == "bob@acme.com"
    assert decision.ref == 1042
    assert "reopened" in decision.why


def test_reply_in_a_closed_thread_of_an_away_owner_goes_to_the_next_csm() -> None:
    away = frozenset({"bob@acme.com"})

    decision = check(REPLY, in_thread("bob@acme.com", ThreadState.CLOSED, away=away))

    assert decision.target is None
    assert "owner bob@acme.com is away" in decision.why


def test_open_reply_does_not_claim_to_reopen() -> None:
    decision = check(REPLY, in_thread("bob@acme.com"))

    assert "reopened" not in decision.why


def test_quoted_signature_with_the_customers_open_thread_goes_to_that_thread() -> None:
    tag_thread = ThreadInfo(1050, "alice@acme.com", ThreadState.OPEN, CUSTOMER)
    snap = replace(SNAP, tag_owner="alice@acme.com", tag_thread=tag_thread)

    decision = check(FRESH_WITH_SIGNATURE, snap)

    assert decision.target == "alice@acme.com"
    assert decision.ref == 1050
    assert "quotes the signature of alice@acme.com" in decision.why


def test_quoted_signature_of_an_away_csm_with_an_open_thread_goes_on_naming_them() -> None:
    tag_thread = ThreadInfo(1050, "alice@acme.com", ThreadState.OPEN, CUSTOMER)
    snap = replace(
        SNAP,
        tag_owner="alice@acme.com",
        tag_thread=tag_thread,
        away=frozenset({"alice@acme.com"}),
    )

    decision = check(FRESH_WITH_SIGNATURE, snap)

    assert decision.target is None
    assert decision.ref == 1050
    assert "owner alice@acme.com is away" in decision.why
    assert "quotes the signature of alice@acme.com" in decision.why


def test_quoted_signature_without_a_thread_starts_a_new_one_with_that_csm() -> None:
    snap = replace(SNAP, tag_owner="alice@acme.com")

    decision = check(FRESH_WITH_SIGNATURE, snap)

    assert decision.target == "alice@acme.com"
    assert decision.ref is None
    assert decision.why == "new thread that quotes the signature of alice@acme.com"


def test_quoted_signature_of_an_away_csm_without_a_thread_is_a_new_thread() -> None:
    snap = replace(SNAP, tag_owner="alice@acme.com", away=frozenset({"alice@acme.com"}))

    assert known_thread.check(FRESH_WITH_SIGNATURE, snap) is None


def test_quoted_signature_of_a_csm_who_left_the_pool_is_a_new_thread() -> None:
    snap = replace(SNAP, tag_owner="dave@acme.com")

    assert known_thread.check(FRESH_WITH_SIGNATURE, snap) is None


def test_thread_found_by_headers_wins_over_a_quoted_signature() -> None:
    tag_thread = ThreadInfo(1050, "alice@acme.com", ThreadState.OPEN, CUSTOMER)
    snap = replace(in_thread("bob@acme.com"), tag_owner="alice@acme.com", tag_thread=tag_thread)

    decision = check(REPLY, snap)

    assert decision.target == "bob@acme.com"
    assert decision.ref == 1042


# What the router reads and records, on an in-memory Redis: who may join a thread, and
# which Message-IDs point to it.

def _routed(rt: Runtime, raw: str) -> tuple[Snapshot, int | None]:
    msg = parse(raw.encode())
    msgkey = message_key(msg, raw.encode())
    snap = rt.store.snapshot(msg, 0.0, msgkey=msgkey)
    outcome = record_decision(rt.store, msgkey, msg, decide(msg, snap), 0.0, raw=raw.encode())
    return snap, outcome.ref


def _mail(sender: str, subject: str, message_id: str, extra: str = "") -> str:
    return (f"From: {sender}\nTo: success@acme.com\nSubject: {subject}\n"
            f"Date: Tue, 03 Mar 2026 10:00:00 +0000\nMessage-ID: {message_id}\n{extra}\n"
            "Hello, a question about our plan.\n")


@pytest.fixture
def rt() -> Iterator[Runtime]:
    with worker_runtime("smtp://127.0.0.1:2525", "alice@acme.com, bob@acme.com") as runtime:
        yield runtime


@pytest.mark.parametrize("provider", ["rediffmail.com", "t-online.de", "yahoo.co.jp", "qq.com"])
def test_a_stranger_at_the_same_free_mail_provider_does_not_join_the_thread(
    rt: Runtime, provider: str,
) -> None:
    _, first = _routed(rt, _mail(f"asha@{provider}", "Private renewal", "<a1@x.example>"))
    assert first is not None
    snap, second = _routed(rt, _mail(f"ravi@{provider}", f"Re: [CS-{first}] hi",
                                     "<r1@x.example>", "In-Reply-To: <a1@x.example>\n"))
    assert snap.thread is None and snap.foreign_refs == (first,)
    assert second not in (None, first)
    assert rt.store.thread(second or 0)["account"] == f"ravi@{provider}"


def test_mail_claiming_a_linked_message_id_re_points_nothing(rt: Runtime) -> None:
    _, mine = _routed(rt, _mail("jane@globex.com", "Renewal", "<q1@globex.com>"))
    # A stranger reuses the customer's Message-ID, and one of the form of our forwards.
    _, theirs = _routed(rt, _mail("eve@initech.com", "Hi", "<q1@globex.com>"))
    _, forged = _routed(rt, _mail("eve@initech.com", "Hi again", "<fwd.0123.abcd@acme.com>"))
    assert None not in (mine, theirs, forged) and mine not in (theirs, forged)
    assert rt.redis.get(key("msgid", "<q1@globex.com>")) == str(mine).encode()
    assert rt.redis.get(key("msgid", "<fwd.0123.abcd@acme.com>")) is None
