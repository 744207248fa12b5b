"""Capacity for a named CSM in rule `known-thread`: a thread a full CSM holds stays theirs,
a new or reopened one goes on."""

from __future__ import annotations

from dataclasses import replace

from test_known_thread import FRESH_WITH_SIGNATURE, REPLY, check, in_thread

from csm_router.core.decision import ThreadState
from support.snapshots import SNAP

FULL_BOB = frozenset({"bob@acme.com"})


def test_reopening_a_closed_thread_of_a_full_owner_goes_to_the_next_csm() -> None:
    snap = replace(in_thread("bob@acme.com", ThreadState.CLOSED), full=FULL_BOB, max_open=40)

    decision = check(REPLY, snap)

    assert (decision.target, decision.ref) == (None, 1042)
    assert "reopened, but bob@acme.com is full (40 open threads)" in decision.why


def test_a_reply_in_an_open_thread_of_a_full_owner_still_goes_to_them() -> None:
    decision = check(REPLY, replace(in_thread("bob@acme.com"), full=FULL_BOB, max_open=40))

    assert decision.target == "bob@acme.com" and "full" not in decision.why


def test_quoted_signature_of_a_full_csm_starts_no_thread_with_them() -> None:
    snap = replace(SNAP, tag_owner="bob@acme.com", full=FULL_BOB, max_open=40)

    decision = check(FRESH_WITH_SIGNATURE, snap)

    assert decision.target is None and decision.ref is None
    assert "quotes the signature of bob@acme.com, but bob@acme.com is full" in decision.why
