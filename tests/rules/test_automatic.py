"""Rule `automatic`: auto-replies, bounces, list and bulk mail and our own copies are ignored."""

from __future__ import annotations

from dataclasses import replace

import pytest

from csm_router.core.decision import Action, ThreadInfo, ThreadState
from csm_router.core.message import Inbound, parse
from csm_router.core.rules import automatic
from support.snapshots import SNAP

CUSTOMER = "Dana Customer <dana@customer.example>"


def mail(extra_headers: str = "", *, sender: str = CUSTOMER) -> Inbound:
    """A customer-looking message with `extra_headers` (each line ending in a newline)."""
    raw = (
        f"From: {sender}\n"
        "To: Acme Customer Success <success@acme.com>\n"
        "Subject: Renewal questions\n"
        "Date: Tue, 03 Mar 2026 09:00:00 +0000\n"
        "Message-ID: <q1@customer.example>\n"
        f"{extra_headers}"
        "\n"
        "Hi, can we talk about the renewal next week?\n"
    )
    return parse(raw.encode())


# A delivery status notification from a sender that looks like a person, with a real return
# path, so that only its Content-Type marks it as a report.
DSN = b"""\
From: Mail Delivery <mx-reports@customer.example>
To: success@acme.com
Subject: Delivery Status Notification (Failure)
Date: Tue, 03 Mar 2026 09:00:00 +0000
Message-ID: <dsn-1@customer.example>
Return-Path: <mx-reports@customer.example>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b1"

--b1
Content-Type: text/plain; charset=us-ascii

Your message could not be delivered to gone@customer.example.
--b1
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.customer.example

Final-Recipient: rfc822; gone@customer.example
Action: failed
Status: 5.1.1
--b1--
"""


@pytest.mark.parametrize(
    ("msg", "why"),
    [
        pytest.param(
            mail("Auto-Submitted: auto-replied\n"),
            "Auto-Submitted: auto-replied",
            id="auto-submitted-auto-replied",
        ),
        pytest.param(
            mail("Auto-Submitted: auto-generated\n"),
            "Auto-Submitted: auto-generated",
            id="auto-submitted-auto-generated",
        ),
        pytest.param(
            mail("Auto-Submitted: Auto-Notified\n"),
            "Auto-Submitted: auto-notified",
            id="auto-submitted-auto-notified-any-case",
        ),
        pytest.param(
            mail("Auto-Submitted: auto-replied (vacation)\n"),
            "Auto-Submitted: auto-replied (vacation)",
            id="auto-submitted-with-comment",
        ),
        pytest.param(mail("X-Autoreply: yes\n"), "X-Autoreply header", id="x-autoreply"),
        pytest.param(mail("X-Autorespond: 1\n"), "X-Autorespond header", id="x-autorespond"),
        pytest.param(
            mail("X-Autoresponder: true\n"), "X-Autoresponder header", id="x-autoresponder"
        ),
        pytest.param(mail("Precedence: bulk\n"), "Precedence: bulk", id="precedence-bulk"),
        pytest.param(mail("Precedence: list\n"), "Precedence: list", id="precedence-list"),
        pytest.param(mail("Precedence: junk\n"), "Precedence: junk", id="precedence-junk"),
        pytest.param(
            mail("Precedence: auto_reply\n"), "Precedence: auto_reply", id="precedence-auto-reply"
        ),
        pytest.param(mail("Precedence:  BULK \n"), "Precedence: bulk", id="precedence-upper"),
        pytest.param(
            mail("List-Id: Acme users <users.lists.customer.example>\n"),
            "List-Id",
            id="list-id",
        ),
        pytest.param(
            mail("List-Unsubscribe: <mailto:leave@news.customer.example>\n"),
            "List-Unsubscribe",
            id="list-unsubscribe",
        ),
        pytest.param(parse(DSN), "multipart/report", id="multipart-report-bounce"),
        pytest.param(mail("Return-Path: <>\n"), "null return path", id="null-return-path"),
        pytest.param(
            mail(sender="Mail Delivery Subsystem <MAILER-DAEMON@mx.customer.example>"),
            "robot sender mailer-daemon@mx.customer.example",
            id="mailer-daemon",
        ),
        pytest.param(
            mail(sender="postmaster@customer.example"),
            "robot sender postmaster@customer.example",
            id="postmaster",
        ),
        pytest.param(
            mail(sender="Customer <no-reply@customer.example>"),
            "robot sender no-reply@customer.example",
            id="no-reply",
        ),
        pytest.param(
            mail(sender="noreply@customer.example"),
            "robot sender noreply@customer.example",
            id="noreply",
        ),
        pytest.param(
            mail(sender="do-not-reply@customer.example"),
            "robot sender do-not-reply@customer.example",
            id="do-not-reply",
        ),
        pytest.param(
            mail(sender="bounces+dana=customer.example@mailer.example"),
            "robot sender bounces+dana=customer.example@mailer.example",
            id="bounces-verp",
        ),
        pytest.param(
            mail("X-CSM-Router: fwd\n", sender="Alice Smith <alice@acme.com>"),
            "our own mail (X-CSM-Router)",
            id="our-own-header",
        ),
        pytest.param(
            mail(sender="Acme Customer Success <success@acme.com>"),
            "sent from the alias itself",
            id="from-the-alias",
        ),
        pytest.param(
            mail(sender='"Dana Customer via Acme Customer Success" <Success@Acme.com>'),
            "sent from the alias itself",
            id="from-the-alias-any-case-as-our-forwards-look",
        ),
        # A plain-text bounce from a server that writes neither a report nor a robot name:
        # its envelope recipient, a forward's VERP return address, tells.
        pytest.param(
            mail("Delivered-To: success+b-0123456789abcdef0123456789abcdef.0a1b2c3d4e5f"
                 "@acme.com\n", sender="Mail System <mx@customer.example>"),
            "a delivery report to the return address success+b-0123",
            id="to-a-forwards-return-address",
        ),
    ],
)
def test_automatic_mail_is_ignored_with_its_reason(msg: Inbound, why: str) -> None:
    decision = automatic.check(msg, SNAP)

    assert decision is not None
    assert decision.action is Action.IGNORE
    assert decision.rule == automatic.NAME == "automatic"
    assert decision.target is None
    assert decision.ref is None
    assert why in decision.why


@pytest.mark.parametrize(
    "msg",
    [
        pytest.param(mail(), id="plain-customer-mail"),
        pytest.param(mail("Auto-Submitted: no\n"), id="auto-submitted-no"),
        pytest.param(mail("Auto-Submitted: No (written by a person)\n"), id="auto-submitted-No"),
        pytest.param(mail("Precedence: first-class\n"), id="precedence-first-class"),
        pytest.param(mail("Return-Path: <dana@customer.example>\n"), id="real-return-path"),
        pytest.param(mail(sender="Noreen Post <noreen@customer.example>"), id="noreen"),
        pytest.param(mail(sender="bouncer@customer.example"), id="bouncer-is-a-person"),
        pytest.param(mail(sender="Alice Smith <alice@acme.com>"), id="pool-csm-by-hand"),
        pytest.param(mail(sender="success@acme.example"), id="alias-local-part-on-another-domain"),
        pytest.param(mail("Delivered-To: success+r-token@acme.com\n"), id="reply-address"),
        pytest.param(mail("Delivered-To: success+b-x@acme.example\n"), id="return-elsewhere"),
    ],
)
def test_mail_a_person_wrote_is_not_automatic(msg: Inbound) -> None:
    assert automatic.check(msg, SNAP) is None


def test_ignored_auto_reply_in_a_known_thread_keeps_the_thread_reference() -> None:
    snap = replace(
        SNAP,
        thread=ThreadInfo(1042, "alice@acme.com", ThreadState.OPEN, "dana@customer.example"),
        matched_by="reply headers",
    )
    msg = mail("In-Reply-To: <fwd-1042@acme.com>\nAuto-Submitted: auto-replied\n")

    decision = automatic.check(msg, snap)

    assert decision is not None
    assert decision.action is Action.IGNORE
    assert decision.ref == 1042
    assert decision.rule == "automatic"


def test_our_own_header_wins_over_other_reasons() -> None:
    msg = mail("X-CSM-Router: fwd\nAuto-Submitted: auto-generated\nPrecedence: bulk\n")

    decision = automatic.check(msg, SNAP)

    assert decision is not None
    assert decision.why == "our own mail (X-CSM-Router)"
