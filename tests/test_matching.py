"""Which thread a message joins and who may write in it, decided on plain values."""

from __future__ import annotations

from csm_router.core.auth import Verdict, reply_address
from csm_router.core.decision import ThreadInfo, ThreadState
from csm_router.core.matching import (
    MAX_LOOKUPS,
    Parties,
    candidates,
    csm_verdict,
    lookups,
    match_thread,
    tag_thread,
)
from csm_router.core.message import Inbound, parse

PARTIES = Parties(alias="success@acme.com", pool=frozenset({"alice@acme.com", "bob@acme.com"}),
                  support="support@acme.com", reply_secret="s3cret")
THREADS = {
    1001: ThreadInfo(1001, "alice@acme.com", ThreadState.OPEN, "jane@initech.com"),
    1002: ThreadInfo(1002, "bob@acme.com", ThreadState.CLOSED, "jane@initech.com"),
    1003: ThreadInfo(1003, "bob@acme.com", ThreadState.OPEN, "jane@initech.com"),
    1004: ThreadInfo(1004, None, ThreadState.HELD, "eve@globex.com"),
}
HEADER_PROOF = Verdict(True, "DMARC pass")


def mail(sender: str, subject: str = "Hi", body: str = "Hello", to: str = "success@acme.com",
         headers: str = "") -> Inbound:
    raw = (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
           f"Message-ID: <m1@example.com>\r\n{headers}\r\n{body}\r\n")
    return parse(raw.encode())


def test_the_pool_support_and_the_alias_are_insiders_and_a_customer_is_not() -> None:
    assert PARTIES.insider("alice@acme.com")
    assert PARTIES.insider("Alice@Acme.com")  # the pool is matched without regard to case
    assert PARTIES.insider("support@acme.com")
    assert PARTIES.insider("success@acme.com")
    assert not PARTIES.insider("jane@initech.com")
    assert not PARTIES.is_staff("success@acme.com")  # the alias's own mail may be a customer's


def test_without_support_nobody_is_support() -> None:
    parties = Parties(alias="success@acme.com", pool=frozenset({"alice@acme.com"}))
    assert not parties.is_staff("support@acme.com")


def test_reply_headers_come_before_subject_and_text_references() -> None:
    msg = mail("jane@initech.com", "Re: [CS-1003] Renewal", "See CS-1004 too")
    asked = lookups(msg)
    assert candidates([1001], asked) == [
        (1001, "reply headers"),
        (1003, "subject reference [CS-1003]"),
        (1004, "reference CS-1004 in the text"),
    ]


def test_lookups_are_capped() -> None:
    refs = " ".join(f"<r{n}@spam.example>" for n in range(500))
    body = " ".join(f"CS-{n}" for n in range(1001, 1501))
    asked = lookups(mail("eve@globex.com", body=body, headers=f"References: {refs}\r\n"))
    assert len(asked.header_ids) == MAX_LOOKUPS
    assert len(asked.body_refs) == MAX_LOOKUPS


def test_a_customer_joins_only_their_own_thread_and_the_others_are_named() -> None:
    found = [(1004, "subject reference [CS-1004]"), (1001, "reference CS-1001 in the text")]
    thread, how, foreign = match_thread(found, THREADS, "jane@initech.com", insider=False)
    assert thread is THREADS[1001]
    assert how == "reference CS-1001 in the text"
    assert foreign == [1004]


def test_an_insider_joins_any_thread_and_unknown_references_are_passed_over() -> None:
    found = [(9999, "reply headers"), (1004, "subject reference [CS-1004]")]
    thread, how, foreign = match_thread(found, THREADS, "alice@acme.com", insider=True)
    assert (thread, how, foreign) == (THREADS[1004], "subject reference [CS-1004]", [])


def test_a_quoted_tag_leads_to_the_latest_open_thread_of_its_owner() -> None:
    assert tag_thread([1002, 1003, 1001], THREADS, "bob@acme.com") is THREADS[1003]
    assert tag_thread([1002], THREADS, "bob@acme.com") is None  # closed
    assert tag_thread([1004], THREADS, None) is None  # no tag: a held thread is not its


def test_with_a_reply_secret_only_the_reply_address_proves_a_csm() -> None:
    forged = mail("alice@acme.com")
    assert not csm_verdict(forged, HEADER_PROOF, THREADS[1001], PARTIES).verified
    proven = mail("alice@acme.com",
                  to=reply_address("success@acme.com", "s3cret", "alice@acme.com", 1001))
    assert csm_verdict(proven, HEADER_PROOF, THREADS[1001], PARTIES).verified
    assert not csm_verdict(proven, HEADER_PROOF, None, PARTIES).verified


def test_the_header_verdict_stands_for_customers_and_without_a_secret() -> None:
    customer = mail("jane@initech.com")
    assert csm_verdict(customer, HEADER_PROOF, THREADS[1001], PARTIES) is HEADER_PROOF
    no_secret = Parties(alias="success@acme.com", pool=PARTIES.pool)
    assert csm_verdict(mail("alice@acme.com"), HEADER_PROOF, None, no_secret) is HEADER_PROOF
