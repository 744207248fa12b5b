"""Sender authentication from Authentication-Results (RFC 8601)."""

from __future__ import annotations

import time

import pytest

from csm_router.auth import verify_sender
from csm_router.message import Inbound, parse

NO_HEADER = "no Authentication-Results header: set ROUTER_TRUSTED_AUTHSERV_ID"


def mail(*results: str, sender: str = "alice@acme.com") -> Inbound:
    """A mail whose Authentication-Results are `results`, topmost first."""
    headers = "".join(f"Authentication-Results: {r}\r\n" for r in results)
    return parse(f"{headers}From: {sender}\r\nTo: success@acme.com\r\nSubject: x\r\n"
                 f"Message-ID: <a@acme.com>\r\n\r\nhi\r\n".encode())


@pytest.mark.parametrize(
    "result",
    [
        "mx.acme.com; dmarc=pass header.from=acme.com",
        "mx.acme.com; dkim=pass (good signature) header.d=acme.com header.s=s1",
        "mx.acme.com; spf=pass smtp.mailfrom=bounces@acme.com",
        "mx.acme.com; dkim=pass header.i=@acme.com",
        "mx.acme.com; auth=pass smtp.auth=alice@acme.com",
        "MX.Acme.COM; dmarc=pass header.from=acme.com",
        "mx.acme.com 1; dmarc=pass header.from=acme.com",
        "(received by) mx.acme.com (v1) 1 (ok); dmarc = pass (p=reject) header.from = acme.com",
        '"mx.acme.com"; dkim/1=pass header.d="acme.com" header.b=aB+/c0==',
        "mx.acme.com; dkim=pass(nested (comment; dkim=fail) here)header.d=acme.com",
        'mx.acme.com; auth=pass smtp.auth="alice smith"@acme.com',
        "mx.acme.com; spf=pass smtp.mailfrom=SRS0=hash=tt=acme.com=alice@fwd.example; "
        "dkim=pass header.d=acme.com",
    ],
)
def test_aligned_pass_from_the_trusted_server_verifies(result: str) -> None:
    verdict = verify_sender(mail(result), "mx.acme.com")
    assert verdict.verified, verdict.why


@pytest.mark.parametrize(
    ("results", "why"),
    [
        (("mx.acme.com; dmarc=fail header.from=acme.com",), "dmarc=fail for acme.com"),
        (("mx.acme.com; dkim=pass header.d=evil.example",), "no passing"),
        (("mx.acme.com; spf=pass smtp.mailfrom=evil.example",), "no passing"),
        (("mx.acme.com; auth=pass smtp.auth=eve@evil.example",), "no passing"),
        (("mx.acme.com; dkim=fail header.d=acme.com; spf=softfail smtp.mailfrom=acme.com",),
         "no passing"),
        (("mx.acme.com; none",), "no passing"),
        (('mx.acme.com; dkim=fail reason="dkim=pass header.d=acme.com"',), "no passing"),
        (("mx.acme.com; spf=neutral (spf=pass smtp.mailfrom=acme.com) smtp.mailfrom=acme.com",),
         "no passing"),
        (("evil.example; dmarc=pass header.from=acme.com",), "no Authentication-Results from"),
        (("mx.acme.com.evil.example; dmarc=pass header.from=acme.com",),
         "no Authentication-Results from"),
        (("mx.acme.com.; dmarc=pass header.from=acme.com",), "no Authentication-Results from"),
        ((), "no Authentication-Results from"),
    ],
)
def test_anything_else_is_refused_when_a_server_is_trusted(
    results: tuple[str, ...], why: str
) -> None:
    verdict = verify_sender(mail(*results), "mx.acme.com")
    assert not verdict.verified and why in verdict.why


def test_a_forged_header_below_the_trusted_servers_own_does_not_help() -> None:
    forged = mail("mx.acme.com; dmarc=fail header.from=acme.com",
                  "mx.acme.com; dmarc=pass header.from=acme.com")
    verdict = verify_sender(forged, "mx.acme.com")
    assert not verdict.verified and "dmarc=fail" in verdict.why


def test_a_forged_header_below_the_real_one_does_not_help_without_a_trusted_id() -> None:
    forged = mail("mx.acme.com; dkim=none",
                  "mx.acme.com; dmarc=pass header.from=acme.com")
    assert not verify_sender(forged, None).verified


def test_only_the_topmost_header_of_the_trusted_server_counts() -> None:
    # Headers of other servers above it (internal hops) are skipped, forged ones below ignored.
    real_pass = mail("internal.acme.com; none",
                     "mx.acme.com 1; dmarc=pass header.from=acme.com",
                     "mx.acme.com; dmarc=fail header.from=acme.com")
    assert verify_sender(real_pass, "mx.acme.com").verified
    real_fail = mail("internal.acme.com; dmarc=pass header.from=acme.com",
                     "mx.acme.com 1; spf=fail smtp.mailfrom=acme.com",
                     "mx.acme.com; dmarc=pass header.from=acme.com")
    assert not verify_sender(real_fail, "mx.acme.com").verified


def test_without_a_trusted_server_only_the_topmost_header_counts() -> None:
    assert verify_sender(mail("mx.x; dmarc=pass header.from=acme.com",
                              "mx.x; dmarc=fail header.from=acme.com"), None).verified
    assert not verify_sender(mail("mx.x; spf=fail smtp.mailfrom=acme.com",
                                  "mx.x; dmarc=pass header.from=acme.com"), None).verified


@pytest.mark.parametrize("trusted", [None, "mx.acme.com"])
def test_mail_without_any_results_is_not_verified(trusted: str | None) -> None:
    verdict = verify_sender(mail(), trusted)
    assert not verdict.verified
    assert (NO_HEADER in verdict.why) is (trusted is None)


@pytest.mark.parametrize("trusted", [None, "mx.acme.com"])
def test_dmarc_fail_refuses_even_an_aligned_spf_pass(trusted: str | None) -> None:
    both = mail("mx.acme.com; spf=pass smtp.mailfrom=alice@acme.com; "
                "dkim=pass header.d=acme.com; dmarc=fail header.from=acme.com")
    verdict = verify_sender(both, trusted)
    assert not verdict.verified and verdict.why == "dmarc=fail for acme.com"


def test_the_strongest_proof_is_reported() -> None:
    verdict = verify_sender(mail("mx.acme.com; spf=pass smtp.mailfrom=acme.com; "
                                 "dkim=pass header.d=acme.com"), "mx.acme.com")
    assert verdict.verified and verdict.why == "dkim=pass for acme.com"


def test_a_pass_for_a_parent_domain_is_aligned_but_not_for_a_lookalike() -> None:
    assert verify_sender(mail("mx; dkim=pass header.d=acme.com", sender="a@eu.acme.com"),
                         "mx").verified
    assert not verify_sender(mail("mx; dkim=pass header.d=acme.com", sender="a@notacme.com"),
                             "mx").verified


@pytest.mark.parametrize(
    "hostile",
    [
        "(" * 100_000,
        '"' * 100_000,
        "\\" * 100_000,
        "a=" * 50_000,
        " =a" * 33_000,
        ";" * 100_000,
        "dkim=pass " + "header.d=x " * 9_000,
        "(a(b\\)c\"d" * 12_000,
    ],
)
def test_a_huge_hostile_header_is_checked_quickly(hostile: str) -> None:
    msg = mail(f"mx.acme.com; {hostile}", "mx.acme.com; dmarc=pass header.from=acme.com")
    start = time.perf_counter()
    for trusted in (None, "mx.acme.com"):
        assert not verify_sender(msg, trusted).verified
    assert time.perf_counter() - start < 1.0
