"""Rule `impersonation`: a claim to be a CSM or Support without proof is quarantined."""

from __future__ import annotations

from dataclasses import replace

import pytest

from csm_router.core.auth import verify_sender
from csm_router.core.decide import decide
from csm_router.core.decision import Action, Snapshot, ThreadInfo, ThreadState
from csm_router.core.message import Inbound, parse
from csm_router.core.rules import impersonation
from support.snapshots import SNAP

THREAD = ThreadInfo(1042, "alice@acme.com", ThreadState.SUPPORT, "dana@customer.example")
IN_THREAD = replace(SNAP, thread=THREAD, matched_by="reply headers",
                    support_address="support@acme.com")
GENUINE = ("Authentication-Results: mx.acme.com; dkim=pass header.d=acme.com; "
           "dmarc=pass header.from=acme.com\n")
FORGED = "Authentication-Results: mx.acme.com; dmarc=pass header.from=acme.com\n"


def reply(sender: str, auth: str = "", body: str = "Thanks, done.") -> Inbound:
    return parse(
        f"{auth}From: {sender}\nTo: success@acme.com\nSubject: Re: [CS-1042] Export\n"
        f"Message-ID: <r1@x.example>\nIn-Reply-To: <fwd.1042@acme.com>\n\n{body}\n".encode()
    )


def judged(msg: Inbound, trusted: str | None = None) -> Snapshot:
    """The snapshot as the router builds it: with the verdict on the sender."""
    verdict = verify_sender(msg, trusted)
    return replace(IN_THREAD, sender_verified=verdict.verified, verdict=verdict.why)


@pytest.mark.parametrize("trusted", [None, "mx.acme.com"])
@pytest.mark.parametrize(
    ("sender", "who"),
    [("alice@acme.com", "CSM alice@acme.com"), ("support@acme.com", "Support (support@acme.com)")],
)
def test_a_csm_or_support_without_any_results_is_quarantined(
    sender: str, who: str, trusted: str | None
) -> None:
    msg = reply(sender, body="#success")
    decision = decide(msg, judged(msg, trusted))
    assert decision.action is Action.QUARANTINE and decision.rule == impersonation.NAME
    assert f"claims to be from {who} but is not authenticated" in decision.why


def test_a_csm_whose_forgery_sits_below_the_real_result_is_quarantined() -> None:
    msg = reply("alice@acme.com",
                "Authentication-Results: mx.acme.com; dmarc=fail header.from=acme.com\n"
                + FORGED)
    decision = decide(msg, judged(msg, "mx.acme.com"))
    assert decision.action is Action.QUARANTINE
    assert decision.why.endswith("not authenticated: dmarc=fail for acme.com")


def test_proven_csm_and_support_steer() -> None:
    csm = reply("alice@acme.com", GENUINE)
    assert decide(csm, judged(csm, "mx.acme.com")).rule == "from-pool-csm"
    support = reply("support@acme.com", GENUINE, body="#success")
    decision = decide(support, judged(support, "mx.acme.com"))
    assert (decision.rule, decision.action) == ("from-support", Action.COMMAND)


@pytest.mark.parametrize(
    ("sender", "auth"),
    [
        # No server pinned: any header may be the sender's own.
        ("alice@acme.com", GENUINE),
        # Pinned, but DKIM for acme.com is what every acme.com mailbox has.
        ("alice@acme.com",
         "Authentication-Results: mx.acme.com; dkim=pass header.d=acme.com\n"),
        ("support@acme.com",
         "Authentication-Results: mx.acme.com; spf=pass smtp.mailfrom=acme.com\n"),
    ],
)
def test_a_domain_wide_or_unpinned_pass_does_not_prove_a_person(sender: str, auth: str) -> None:
    msg = reply(sender, auth, body="#success")
    trusted = "mx.acme.com" if "dmarc" not in auth else None
    decision = decide(msg, judged(msg, trusted))
    assert decision.action is Action.QUARANTINE and decision.rule == impersonation.NAME


@pytest.mark.parametrize("trusted", [None, "mx.acme.com"])
@pytest.mark.parametrize(
    "auth", ["", "Authentication-Results: mx.acme.com; dmarc=fail header.from=customer.example\n"]
)
def test_customers_need_no_proof(auth: str, trusted: str | None) -> None:
    msg = reply("dana@customer.example", auth)
    snap = judged(msg, trusted)
    assert not snap.sender_verified
    assert impersonation.check(msg, snap) is None
    # The thread is with Support, so the customer's reply follows it there.
    assert (decide(msg, snap).rule, decide(msg, snap).action) == ("known-thread", Action.SUPPORT)
