"""Rule `onboarding-owner`: an account still in onboarding goes to its onboarding CSM."""

from __future__ import annotations

from dataclasses import replace

import pytest

from csm_router.core.decision import Action, Onboarding
from csm_router.core.message import parse
from csm_router.core.rules import onboarding_owner
from support.snapshots import NOW, SNAP

DAY = 86_400

NEW_MAIL = parse(
    b"""\
From: Dana Customer <Dana@Customer.Example>
To: Acme Customer Success <success@acme.com>
Subject: How do we invite our team?
Date: Tue, 03 Mar 2026 09:00:00 +0000
Message-ID: <q1@customer.example>

Hi, we just signed up. How do we invite the rest of the team?
"""
)


def onboarding(
    owner: str = "carol@acme.com", *, days_ago: float = 10, days: int = 90
) -> Onboarding:
    return Onboarding(owner, NOW - days_ago * DAY, days)


def test_account_in_onboarding_goes_to_its_onboarding_owner() -> None:
    decision = onboarding_owner.check(NEW_MAIL, replace(SNAP, onboarding=onboarding()))

    assert decision is not None
    assert decision.action is Action.FORWARD
    assert decision.target == "carol@acme.com"
    assert decision.ref is None
    assert decision.rule == onboarding_owner.NAME == "onboarding-owner"
    assert decision.why == "onboarding owner of customer.example"


def test_account_without_onboarding_owner_is_not_this_rules_business() -> None:
    assert onboarding_owner.check(NEW_MAIL, SNAP) is None


@pytest.mark.parametrize(
    ("days_ago", "days"),
    [
        pytest.param(91, 90, id="91-days-into-90"),
        pytest.param(90, 90, id="exactly-90-days-into-90"),
        pytest.param(8, 7, id="8-days-into-7"),
        pytest.param(0, 0, id="zero-days"),
    ],
)
def test_onboarding_expired_by_days_graduates_the_account(days_ago: float, days: int) -> None:
    snap = replace(SNAP, onboarding=onboarding(days_ago=days_ago, days=days))

    assert onboarding_owner.check(NEW_MAIL, snap) is None


def test_last_second_of_onboarding_still_goes_to_the_owner() -> None:
    snap = replace(SNAP, onboarding=onboarding(days_ago=90 - 1 / DAY, days=90))

    decision = onboarding_owner.check(NEW_MAIL, snap)

    assert decision is not None
    assert decision.target == "carol@acme.com"


def test_onboarding_owner_away_leaves_the_mail_to_the_pool() -> None:
    snap = replace(SNAP, onboarding=onboarding(), away=frozenset({"carol@acme.com"}))

    assert onboarding_owner.check(NEW_MAIL, snap) is None


def test_onboarding_owner_who_left_the_pool_leaves_the_mail_to_the_pool() -> None:
    snap = replace(SNAP, onboarding=onboarding("dave@acme.com"))

    assert onboarding_owner.check(NEW_MAIL, snap) is None


def test_a_full_onboarding_owner_gets_no_new_thread_and_the_reason_says_so() -> None:
    snap = replace(SNAP, onboarding=onboarding(), full=frozenset({"carol@acme.com"}),
                   max_open=5)

    decision = onboarding_owner.check(NEW_MAIL, snap)

    assert decision is not None and decision.action is Action.FORWARD
    assert decision.target is None  # the round-robin picks among those with room
    assert decision.why == ("onboarding owner of customer.example, but carol@acme.com is "
                            "full (5 open threads): next in the round-robin")
