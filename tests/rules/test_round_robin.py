"""Rule `round-robin`: everything else goes to the next CSM the pool hands out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from csm_router.core.decision import Action, Onboarding, Snapshot, ThreadInfo, ThreadState
from csm_router.core.message import parse
from csm_router.core.rules import round_robin
from support.snapshots import NOW, POOL, SNAP

NEW_MAIL = parse(
    b"""\
From: Erin New <erin@prospect.example>
To: success@acme.com
Subject: Question about plans
Date: Tue, 03 Mar 2026 09:00:00 +0000
Message-ID: <n1@prospect.example>

Hello, which plan includes SSO?
"""
)


@pytest.mark.parametrize(
    "snap",
    [
        pytest.param(SNAP, id="plain-new-mail"),
        pytest.param(replace(SNAP, away=frozenset(m.address for m in POOL)), id="everyone-away"),
        pytest.param(replace(SNAP, pool=()), id="empty-pool"),
        pytest.param(
            replace(SNAP, thread=ThreadInfo(1042, "alice@acme.com", ThreadState.OPEN)),
            id="even-in-a-known-thread",
        ),
        pytest.param(replace(SNAP, tag_owner="bob@acme.com"), id="even-with-a-quoted-tag"),
        pytest.param(
            replace(SNAP, onboarding=Onboarding("carol@acme.com", NOW, 90)),
            id="even-in-onboarding",
        ),
        pytest.param(replace(SNAP, sender_verified=False), id="unverified-sender"),
    ],
)
def test_round_robin_always_answers_next_csm(snap: Snapshot) -> None:
    decision = round_robin.check(NEW_MAIL, snap)

    assert decision.action is Action.FORWARD
    assert decision.target is None  # the pool picks (or holds) atomically when recording
    assert decision.ref is None
    assert decision.rule == round_robin.NAME == "round-robin"
    assert "round-robin" in decision.why
    assert decision.target_label == "next CSM"
