"""The routing policy as a table: sample mail and state in, action, target and rule out."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from csm_router.core.decide import decide
from csm_router.core.decision import Action, Onboarding, Snapshot, ThreadInfo, ThreadState
from csm_router.core.message import parse
from csm_router.core.rulefile import load_rules
from support.snapshots import NOW, SNAP

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"

DAY = 86_400
CUSTOMER = "dana@customer.example"
ALICES_THREAD = ThreadInfo(1042, "alice@acme.com", ThreadState.OPEN, CUSTOMER)
BOBS_THREAD = ThreadInfo(1042, "bob@acme.com", ThreadState.OPEN, CUSTOMER)
ONBOARDING = Onboarding("carol@acme.com", NOW - 10 * DAY, 90)  # customer.example, by Carol
IN_ALICES_THREAD = replace(SNAP, thread=ALICES_THREAD, matched_by="reply headers")
IN_BOBS_THREAD = replace(SNAP, thread=BOBS_THREAD, matched_by="reply headers")

# -- sample mail -----------------------------------------------------------------------------

OUT_OF_OFFICE = b"""\
From: Alice Smith <alice@acme.com>
To: Dana Customer <dana@customer.example>
Cc: Acme Customer Success <success@acme.com>
Subject: Automatic reply: [CS-1042] Renewal questions
Date: Tue, 03 Mar 2026 10:00:05 +0000
Message-ID: <ooo.1@acme.com>
In-Reply-To: <q2@customer.example>
Auto-Submitted: auto-replied
X-Auto-Response-Suppress: All

I am out of the office until Monday 9 March and will answer when I am back.
"""

CSM_REPLY = b"""\
From: Bob Jones <bob@acme.com>
To: Dana Customer <dana@customer.example>
Cc: Acme Customer Success <success@acme.com>
Subject: Re: [CS-1042] Renewal questions
Date: Tue, 03 Mar 2026 09:30:00 +0000
Message-ID: <r1@acme.com>
In-Reply-To: <fwd.1042@acme.com>
References: <q1@customer.example> <fwd.1042@acme.com>

Hi Dana, happy to walk you through the renewal on Thursday.
"""

CSM_NOTE = b"""\
From: Alice Smith <alice@acme.com>
To: Acme Customer Success <success@acme.com>
Subject: testing my signature
Date: Tue, 03 Mar 2026 08:00:00 +0000
Message-ID: <note.1@acme.com>

Does this reach anyone?
"""

CUSTOMER_REPLY = b"""\
From: Dana Customer <dana@customer.example>
To: Acme Customer Success <success@acme.com>
Subject: Re: [CS-1042] Renewal questions
Date: Tue, 03 Mar 2026 10:00:00 +0000
Message-ID: <q2@customer.example>
In-Reply-To: <fwd.1042@acme.com>
References: <q1@customer.example> <fwd.1042@acme.com>

Thanks, Thursday works.

On Tue, 3 Mar 2026 at 09:30, Bob Jones <bob@acme.com> wrote:
> Hi Dana, happy to walk you through the renewal on Thursday.
"""

NEW_MAIL = b"""\
From: Dana Customer <dana@customer.example>
To: Acme Customer Success <success@acme.com>
Subject: How do we invite our team?
Date: Tue, 03 Mar 2026 09:00:00 +0000
Message-ID: <q1@customer.example>

Hi, we just signed up. How do we invite the rest of the team?
"""

QUOTES_SIGNATURE = b"""\
From: Dana Customer <dana@customer.example>
To: Acme Customer Success <success@acme.com>
Subject: One more question
Date: Tue, 03 Mar 2026 11:00:00 +0000
Message-ID: <q3@customer.example>

Alice, one more thing about the invoice.

> Alice Smith
> Customer Success \xc2\xb7 Acme Customer Success
> success@acme.com \xc2\xb7 CSM-7KQ4XM
"""

NEWSLETTER = b"""\
From: Customer Example News <news@customer.example>
To: success@acme.com
Subject: Our March product update
Date: Tue, 03 Mar 2026 07:00:00 +0000
Message-ID: <news.2026-03@customer.example>
Precedence: bulk
List-Unsubscribe: <https://customer.example/unsubscribe?u=acme>

What's new this month.
"""

OUR_FORWARD_LOOPED_BACK = b"""\
From: "Dana Customer via Acme Customer Success" <success@acme.com>
Reply-To: Dana Customer <dana@customer.example>, success@acme.com
To: Alice Smith <alice@acme.com>
Subject: [CS-1042] Renewal questions
Date: Tue, 03 Mar 2026 09:00:02 +0000
Message-ID: <fwd.1042@acme.com>
X-CSM-Router: forward

Hi, can we talk about the renewal next week?
"""


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes
    snap: Snapshot
    action: Action
    target: str | None
    rule: str


TABLE = [
    Case(
        "csm-out-of-office-copied-to-alias-is-ignored",  # automatic beats from-pool-csm
        OUT_OF_OFFICE,
        IN_ALICES_THREAD,
        Action.IGNORE,
        None,
        "automatic",
    ),
    Case(
        "csm-reply-in-known-thread-is-recorded-not-forwarded",
        CSM_REPLY,
        IN_ALICES_THREAD,
        Action.RECORD_REPLY,
        "bob@acme.com",
        "from-pool-csm",
    ),
    Case(
        "owner-reply-in-known-thread-is-recorded",
        CSM_REPLY,
        IN_BOBS_THREAD,
        Action.RECORD_REPLY,
        "bob@acme.com",
        "from-pool-csm",
    ),
    Case(
        "csm-mail-outside-any-thread-is-ignored-even-for-an-onboarding-domain",
        CSM_NOTE,
        replace(SNAP, onboarding=ONBOARDING),
        Action.IGNORE,
        None,
        "from-pool-csm",
    ),
    Case(
        "unverified-csm-claim-in-thread-is-quarantined",
        CSM_REPLY,
        replace(IN_ALICES_THREAD, sender_verified=False),
        Action.QUARANTINE,
        None,
        "impersonation",
    ),
    Case(
        "customer-reply-in-known-thread-of-onboarding-account-goes-to-thread-owner",
        CUSTOMER_REPLY,
        replace(IN_BOBS_THREAD, onboarding=ONBOARDING),
        Action.FORWARD,
        "bob@acme.com",
        "known-thread",
    ),
    Case(
        "customer-reply-while-owner-away-goes-to-next-csm-not-onboarding-owner",
        CUSTOMER_REPLY,
        replace(IN_BOBS_THREAD, onboarding=ONBOARDING, away=frozenset({"bob@acme.com"})),
        Action.FORWARD,
        None,
        "known-thread",
    ),
    Case(
        "quoted-signature-beats-onboarding",
        QUOTES_SIGNATURE,
        replace(SNAP, tag_owner="alice@acme.com", onboarding=ONBOARDING),
        Action.FORWARD,
        "alice@acme.com",
        "known-thread",
    ),
    Case(
        "onboarding-beats-round-robin",
        NEW_MAIL,
        replace(SNAP, onboarding=ONBOARDING),
        Action.FORWARD,
        "carol@acme.com",
        "onboarding-owner",
    ),
    Case(
        "expired-onboarding-falls-to-round-robin",
        NEW_MAIL,
        replace(SNAP, onboarding=Onboarding("carol@acme.com", NOW - 91 * DAY, 90)),
        Action.FORWARD,
        None,
        "round-robin",
    ),
    Case(
        "away-onboarding-owner-falls-to-round-robin",
        NEW_MAIL,
        replace(SNAP, onboarding=ONBOARDING, away=frozenset({"carol@acme.com"})),
        Action.FORWARD,
        None,
        "round-robin",
    ),
    Case(
        "quoted-signature-of-away-csm-falls-to-round-robin",
        QUOTES_SIGNATURE,
        replace(SNAP, tag_owner="alice@acme.com", away=frozenset({"alice@acme.com"})),
        Action.FORWARD,
        None,
        "round-robin",
    ),
    Case("brand-new-mail-goes-round-robin", NEW_MAIL, SNAP, Action.FORWARD, None, "round-robin"),
    Case(
        "bulk-mail-from-onboarding-domain-is-ignored",  # automatic beats onboarding
        NEWSLETTER,
        replace(SNAP, onboarding=ONBOARDING),
        Action.IGNORE,
        None,
        "automatic",
    ),
    Case(
        "our-own-forward-looped-back-in-its-thread-is-ignored",  # automatic beats known-thread
        OUR_FORWARD_LOOPED_BACK,
        IN_ALICES_THREAD,
        Action.IGNORE,
        None,
        "automatic",
    ),
]

# Real bounces, one per way `automatic` recognises them, and each line-ending variant.
SISIMAI_BOUNCES = [
    "bsd-lf/arf-01.eml",  # multipart/report (abuse feedback)
    "bsd-lf/lhost-amazonworkmail-01.eml",  # Return-Path: <>
    "bsd-lf/lhost-exim-01.eml",  # Auto-Submitted: auto-replied
    "bsd-lf/lhost-sendmail-01.eml",  # Auto-Submitted: auto-generated (failure)
    "bsd-lf/lhost-biglobe-01.eml",  # postmaster@ sender only
    "bsd-lf/lhost-kddi-01.eml",  # no-reply@ sender only
    "bsd-lf/lhost-zoho-01.eml",  # mailer-daemon@ sender only
    "bsd-lf/rfc3834-01.eml",  # a vacation auto-reply from a person's address
    "dos-crlf/lhost-office365-01.eml",
    "mac-cr/lhost-exchange2007-01.eml",
    "mac-cr/lhost-postfix-01.eml",
]
# Ordinary replies from real clients (talon's outlook.eml and share-block have no Message-ID).
TALON_REPLIES = [
    "android.eml",
    "aol.eml",
    "apple_mail.eml",
    "apple_mail_2.eml",
    "comcast.eml",
    "gmail.eml",
    "hotmail.eml",
    "iphone.eml",
    "sparrow.eml",
    "thunderbird.eml",
    "yahoo.eml",
]


def _corpus_case(
    folder: str, name: str, action: Action, rule: str, snap: Snapshot = SNAP
) -> object:
    path = CORPUS / folder / name
    case_id = f"{folder.rpartition('/')[2]}:{name}"
    if not path.is_file():
        skip = pytest.mark.skip(reason=f"corpus file {path} not found")
        return pytest.param(Case(case_id, b"", snap, action, None, rule), id=case_id, marks=skip)
    return pytest.param(Case(case_id, path.read_bytes(), snap, action, None, rule), id=case_id)


CORPUS_TABLE = [
    *(_corpus_case("bounces/sisimai", n, Action.IGNORE, "automatic") for n in SISIMAI_BOUNCES),
    *(
        _corpus_case("bounces/sisimai", n, Action.IGNORE, "automatic", IN_ALICES_THREAD)
        for n in ("bsd-lf/lhost-gmail-01.eml", "bsd-lf/rhost-google-01.eml")
    ),
    *(_corpus_case("replies/talon", n, Action.FORWARD, "round-robin") for n in TALON_REPLIES),
    _corpus_case(
        "bounces/sisimai", "not-bounce/is-not-bounce-01.eml", Action.FORWARD, "round-robin"
    ),
    _corpus_case(
        "bounces/sisimai", "not-bounce/is-not-bounce-02.eml", Action.FORWARD, "round-robin"
    ),
]


@pytest.mark.parametrize("case", [*(pytest.param(c, id=c.name) for c in TABLE), *CORPUS_TABLE])
def test_policy_routes_sample_mail(case: Case) -> None:
    msg = parse(case.raw)

    decision = decide(msg, case.snap)

    assert (decision.action, decision.target, decision.rule) == (
        case.action,
        case.target,
        case.rule,
    ), decision.why
    assert decision.why  # every decision explains itself


def test_ignored_mail_in_a_known_thread_keeps_its_reference() -> None:
    decision = decide(parse(OUT_OF_OFFICE), IN_ALICES_THREAD)

    assert decision.action is Action.IGNORE
    assert decision.ref == 1042


def test_forward_to_the_next_csm_keeps_the_thread_reference_and_names_the_owner() -> None:
    snap = replace(IN_BOBS_THREAD, away=frozenset({"bob@acme.com"}))

    decision = decide(parse(CUSTOMER_REPLY), snap)

    assert decision.ref == 1042
    assert "bob@acme.com is away" in decision.why


def test_mailing_list_robot_reply_is_ignored_as_automatic() -> None:
    path = CORPUS / "bounces" / "sisimai" / "bsd-lf" / "lhost-fml-02.eml"
    if not path.is_file():
        pytest.skip(f"corpus file {path} not found")

    decision = decide(parse(path.read_bytes()), SNAP)

    assert (decision.action, decision.rule) == (Action.IGNORE, "automatic"), decision.why


# -- technical requests: who wins --------------------------------------------------------

RULES = load_rules()
WITH_SUPPORT = replace(SNAP, support_address="support@acme.com", support_rules=RULES)
BUG_REPORT = b"""\
From: Dana Customer <dana@customer.example>
To: success@acme.com
Subject: Export broken
Message-ID: <bug-1@customer.example>

Hi, since this morning every export returns a 500 error and the page crashes.
"""


def test_a_new_technical_request_goes_to_support() -> None:
    decision = decide(parse(BUG_REPORT), WITH_SUPPORT)
    assert (decision.action, decision.rule) == (Action.SUPPORT, "technical")
    assert "500 error" in decision.why


def test_a_technical_request_in_a_known_thread_stays_with_its_owner() -> None:
    snap = replace(WITH_SUPPORT, thread=ALICES_THREAD, matched_by="reply headers")
    decision = decide(parse(BUG_REPORT), snap)
    assert (decision.action, decision.target, decision.rule) == (
        Action.FORWARD, "alice@acme.com", "known-thread")


def test_a_technical_request_from_an_onboarding_account_stays_with_its_owner() -> None:
    decision = decide(parse(BUG_REPORT), replace(WITH_SUPPORT, onboarding=ONBOARDING))
    assert (decision.action, decision.target, decision.rule) == (
        Action.FORWARD, "carol@acme.com", "onboarding-owner")


def test_without_a_support_address_technical_requests_stay_with_cs() -> None:
    decision = decide(parse(BUG_REPORT), replace(WITH_SUPPORT, support_address=None))
    assert decision.rule == "round-robin"


# -- an onboarding account its owner cannot take says so ------------------------------------


def test_onboarding_owner_away_until_a_time_is_the_reason_for_the_round_robin() -> None:
    back = NOW + 2 * DAY  # Thu 5 Mar 2026 09:00 UTC
    snap = replace(SNAP, onboarding=ONBOARDING, away=frozenset({"carol@acme.com"}),
                   away_until={"carol@acme.com": back})
    decision = decide(parse(NEW_MAIL), snap)
    assert (decision.action, decision.target, decision.rule) == (
        Action.FORWARD, None, "round-robin")
    assert decision.why == ("onboarding owner carol@acme.com is away (until Thu 5 Mar 09:00 "
                            "UTC); next in the round-robin")


def test_onboarding_owner_away_without_an_end_is_named_too() -> None:
    snap = replace(SNAP, onboarding=ONBOARDING, away=frozenset({"carol@acme.com"}))
    decision = decide(parse(NEW_MAIL), snap)
    assert decision.why == "onboarding owner carol@acme.com is away; next in the round-robin"


def test_onboarding_owner_off_shift_is_the_reason_for_the_round_robin() -> None:
    snap = replace(SNAP, onboarding=ONBOARDING, off_shift=frozenset({"carol@acme.com"}),
                   back_at={"carol@acme.com": NOW + 8 * 3600})
    decision = decide(parse(NEW_MAIL), snap)
    assert decision.rule == "round-robin"
    assert decision.why == ("onboarding owner carol@acme.com is off shift (until Tue 3 Mar "
                            "17:00 UTC); next in the round-robin")


def test_onboarding_owner_who_left_the_pool_is_the_reason_for_the_round_robin() -> None:
    snap = replace(SNAP, onboarding=Onboarding("dave@acme.com", NOW - DAY, 90))
    decision = decide(parse(NEW_MAIL), snap)
    assert decision.why == ("onboarding owner dave@acme.com has left the pool; next in the "
                            "round-robin")


def test_a_technical_request_of_an_away_onboarding_owner_names_the_absence() -> None:
    snap = replace(WITH_SUPPORT, onboarding=ONBOARDING, away=frozenset({"carol@acme.com"}))
    decision = decide(parse(BUG_REPORT), snap)
    assert (decision.action, decision.rule) == (Action.SUPPORT, "technical")
    assert "500 error" in decision.why
    assert decision.why.endswith("; onboarding owner carol@acme.com is away")


def test_ordinary_round_robin_and_expired_onboarding_say_nothing_of_an_owner() -> None:
    expired = Onboarding("carol@acme.com", NOW - 91 * DAY, 90)
    for snap in (SNAP, replace(SNAP, onboarding=expired, away=frozenset({"carol@acme.com"}))):
        assert decide(parse(NEW_MAIL), snap).why == "new thread, next in the round-robin"
