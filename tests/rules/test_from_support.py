"""Rule `from-support`: Support gives a thread back with #success, in its own words only."""

from __future__ import annotations

from dataclasses import replace

from csm_router.core.decision import Action, ThreadInfo, ThreadState
from csm_router.core.message import Inbound, parse
from csm_router.core.rules import from_support
from support.snapshots import SNAP

THREAD = ThreadInfo(1042, "alice@acme.com", ThreadState.SUPPORT, "dana@customer.example")
WITH_SUPPORT = replace(SNAP, thread=THREAD, matched_by="subject reference [CS-1042]",
                       support_address="support@acme.com")


def from_support_saying(body: str) -> Inbound:
    return parse(
        ("From: support@acme.com\nTo: success@acme.com\nSubject: Re: [CS-1042] Export\n"
         f"Message-ID: <s1@acme.com>\n\n{body}\n").encode()
    )


def test_success_gives_the_thread_back() -> None:
    decision = from_support.check(from_support_saying("Fixed.\n#success"), WITH_SUPPORT)
    assert decision is not None
    assert (decision.action, decision.ref, decision.error) == (Action.COMMAND, 1042, None)


def test_a_success_line_the_customer_wrote_is_not_carried_out() -> None:
    snap = replace(WITH_SUPPORT, customer_commands=frozenset({"#success"}))
    decision = from_support.check(from_support_saying("#success"), snap)
    assert decision is not None and decision.action is Action.IGNORE
    assert decision.error is not None and "customer's mail has the same line" in decision.error


def test_a_customers_success_under_a_japanese_outlook_block_is_not_read() -> None:
    body = ("対応中です。\n\n差出人: Dana <dana@customer.example>\n送信日時: 2026年3月3日 9:30\n"
            "宛先: support@acme.com\n件名: Export\n\n#success")
    decision = from_support.check(from_support_saying(body), WITH_SUPPORT)
    assert decision is not None and decision.action is Action.IGNORE
    assert decision.command is None and decision.error is None
