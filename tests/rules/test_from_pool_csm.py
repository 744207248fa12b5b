"""Rule `from-pool-csm`: a CSM's reply copied to the alias is recorded, never forwarded."""

from __future__ import annotations

from dataclasses import replace

from csm_router.core.decision import Action, ThreadInfo, ThreadState
from csm_router.core.message import Inbound, parse
from csm_router.core.rules import from_pool_csm
from support.snapshots import SNAP

THREAD = ThreadInfo(1042, "alice@acme.com", ThreadState.OPEN, "dana@customer.example")
IN_THREAD = replace(SNAP, thread=THREAD, matched_by="reply headers")


def reply_from(sender: str) -> Inbound:
    """A reply to the customer with the alias copied, as a CSM's mail client writes it."""
    raw = (
        f"From: {sender}\n"
        "To: Dana Customer <dana@customer.example>\n"
        "Cc: Acme Customer Success <success@acme.com>\n"
        "Subject: Re: [CS-1042] Renewal questions\n"
        "Date: Tue, 03 Mar 2026 09:30:00 +0000\n"
        "Message-ID: <r1@acme.com>\n"
        "In-Reply-To: <fwd.1042@acme.com>\n"
        "References: <q1@customer.example> <fwd.1042@acme.com>\n"
        "\n"
        "Hi Dana, happy to walk you through the renewal on Thursday.\n"
    )
    return parse(raw.encode())


def test_owner_answering_is_recorded_as_the_owners_reply() -> None:
    decision = from_pool_csm.check(reply_from("Alice Smith <alice@acme.com>"), IN_THREAD)

    assert decision is not None
    assert decision.action is Action.RECORD_REPLY
    assert decision.target == "alice@acme.com"
    assert decision.ref == 1042
    assert decision.rule == from_pool_csm.NAME == "from-pool-csm"
    assert decision.why == "the owner answered"


def test_another_csm_answering_is_recorded_for_that_csm() -> None:
    decision = from_pool_csm.check(reply_from("Bob Jones <bob@acme.com>"), IN_THREAD)

    assert decision is not None
    assert decision.action is Action.RECORD_REPLY
    assert decision.target == "bob@acme.com"
    assert decision.ref == 1042
    assert decision.rule == "from-pool-csm"
    assert decision.why == "another CSM answered"


def test_csm_answering_a_held_thread_is_recorded_as_another_csm() -> None:
    held = replace(SNAP, thread=ThreadInfo(1043, None, ThreadState.HELD))

    decision = from_pool_csm.check(reply_from("carol@acme.com"), held)

    assert decision is not None
    assert decision.action is Action.RECORD_REPLY
    assert decision.target == "carol@acme.com"
    assert decision.ref == 1043
    assert "another CSM" in decision.why


def test_csm_address_is_recognised_whatever_its_case() -> None:
    decision = from_pool_csm.check(reply_from("Alice Smith <Alice@ACME.com>"), IN_THREAD)

    assert decision is not None
    assert decision.action is Action.RECORD_REPLY
    assert decision.target == "alice@acme.com"


def test_csm_mail_outside_any_thread_is_ignored_not_forwarded() -> None:
    decision = from_pool_csm.check(reply_from("Bob Jones <bob@acme.com>"), SNAP)

    assert decision is not None
    assert decision.action is Action.IGNORE
    assert decision.target is None
    assert decision.ref is None
    assert decision.rule == "from-pool-csm"
    assert "bob@acme.com" in decision.why
    assert "outside any known thread" in decision.why


def test_away_csm_answering_is_still_recorded() -> None:
    away = replace(IN_THREAD, away=frozenset({"alice@acme.com"}))

    decision = from_pool_csm.check(reply_from("Alice Smith <alice@acme.com>"), away)

    assert decision is not None
    assert decision.action is Action.RECORD_REPLY
    assert decision.target == "alice@acme.com"


def test_unverified_mail_claiming_to_be_a_csm_steers_nothing() -> None:
    unverified = replace(IN_THREAD, sender_verified=False)

    assert from_pool_csm.check(reply_from("Alice Smith <alice@acme.com>"), unverified) is None


def test_unverified_csm_claim_outside_a_thread_is_not_ignored_either() -> None:
    unverified = replace(SNAP, sender_verified=False)

    assert from_pool_csm.check(reply_from("Bob Jones <bob@acme.com>"), unverified) is None


def test_customer_mail_in_a_thread_is_not_a_csm_reply() -> None:
    msg = reply_from("Dana Customer <dana@customer.example>")

    assert from_pool_csm.check(msg, IN_THREAD) is None


def test_colleague_on_the_company_domain_outside_the_pool_is_not_a_csm() -> None:
    msg = reply_from("Dave Former <dave@acme.com>")

    assert from_pool_csm.check(msg, IN_THREAD) is None


def reply_saying(body: str) -> Inbound:
    raw = (
        "From: Bob Jones <bob@acme.com>\nTo: dana@customer.example\nCc: success@acme.com\n"
        "Subject: Re: [CS-1042] Renewal questions\nMessage-ID: <r2@acme.com>\n\n" + body
    )
    return parse(raw.encode())


def test_a_command_the_customer_wrote_too_is_not_carried_out() -> None:
    # Bob's client quoted the customer in a way the splitter did not see (a bottom-posted
    # reply with nothing above): the line is the customer's, not Bob's.
    snap = replace(IN_THREAD, customer_commands=frozenset({"#reassign carol@acme.com"}))
    decision = from_pool_csm.check(reply_saying("#reassign carol@acme.com\n"), snap)
    assert decision is not None and decision.action is Action.RECORD_REPLY
    assert decision.command is not None and decision.command.name == "reassign"
    assert decision.error is not None and "customer's mail has the same line" in decision.error


def test_a_command_of_the_csms_own_is_carried_out() -> None:
    snap = replace(IN_THREAD, customer_commands=frozenset({"#reassign carol@acme.com"}))
    decision = from_pool_csm.check(reply_saying("Over to Alice.\n#reassign alice@acme.com\n"),
                                   snap)
    assert decision is not None and decision.error is None
    assert decision.command is not None and decision.command.argument == "alice@acme.com"


def test_a_customers_command_under_a_localized_outlook_block_is_not_read() -> None:
    body = ("Díky, podívám se na to.\n\nOd: Dana Customer <dana@customer.example>\n"
            "Odesláno: úterý 3. března 2026 9:30\nKomu: success@acme.com\n"
            "Předmět: Renewal questions\n\n#reassign carol@acme.com\n")
    decision = from_pool_csm.check(reply_saying(body), IN_THREAD)
    assert decision is not None and decision.command is None and decision.error is None
