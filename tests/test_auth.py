"""Sender authentication from Authentication-Results (RFC 8601)."""

from __future__ import annotations

import time

import pytest

from csm_router.core.auth import (
    authserv_note,
    raw_headers,
    reply_address,
    steering_note,
    verify_reply_address,
    verify_sender,
)
from csm_router.core.message import Inbound, parse

NOT_SET = "ROUTER_TRUSTED_AUTHSERV_ID is not set"
ENCODED_SENDER = "=?utf-8?q?x=3Bdmarc=3Dpass=20header.from=3Dacme.com=20=28?=@attacker.example"


def mail(*results: str, sender: str = "alice@acme.com") -> Inbound:
    """A mail whose Authentication-Results are `results`, topmost first."""
    headers = "".join(f"Authentication-Results: {r}\r\n" for r in results)
    return parse(f"{headers}From: {sender}\r\nTo: success@acme.com\r\nSubject: x\r\n"
                 f"Message-ID: <a@acme.com>\r\n\r\nhi\r\n".encode())


@pytest.mark.parametrize(
    "result",
    [
        "mx.acme.com; dmarc=pass header.from=acme.com",
        "mx.acme.com; spf=pass smtp.mailfrom=acme.com; dkim=pass header.d=acme.com; "
        "dmarc=pass (p=reject) header.from=acme.com",
        "mx.acme.com; auth=pass smtp.auth=alice@acme.com",
        "mx.acme.com; auth=pass smtp.auth=Alice",
        "MX.Acme.COM; dmarc=pass header.from=ACME.com",
        "mx.acme.com 1; dmarc=pass header.from=acme.com",
        "(received by) mx.acme.com (v1) 1 (ok); dmarc = pass (p=reject) header.from = acme.com",
        '"mx.acme.com"; dmarc/1=pass header.from="acme.com"',
        "mx.acme.com; dkim=pass(nested (comment; dkim=fail) here)header.d=acme.com; "
        "dmarc=pass header.from=acme.com",
        "mx.acme.com; spf=pass smtp.mailfrom=SRS0=hash=tt=acme.com=alice@fwd.example; "
        "dmarc=pass header.from=acme.com",
        "mx.acme.com; dmarc=pass header.from=acme.com; auth=pass smtp.auth=alice@acme.com",
        f"mx.acme.com; spf=pass smtp.mailfrom={ENCODED_SENDER}; dmarc=pass header.from=acme.com",
    ],
)
def test_a_dmarc_pass_or_own_submission_from_the_pinned_server_verifies(result: str) -> None:
    verdict = verify_sender(mail(result), "mx.acme.com")
    assert verdict.verified, verdict.why


@pytest.mark.parametrize(
    ("results", "why"),
    [
        (("mx.acme.com; dmarc=fail header.from=acme.com",), "dmarc=fail for acme.com"),
        # A domain's DKIM key or SPF record is shared by every mailbox of the domain.
        (("mx.acme.com; dkim=pass header.d=acme.com header.s=s1",), "no dmarc=pass"),
        (("mx.acme.com; dkim=pass header.i=@acme.com",), "no dmarc=pass"),
        (("mx.acme.com; spf=pass smtp.mailfrom=alice@acme.com",), "no dmarc=pass"),
        (("mx.acme.com; spf=pass smtp.mailfrom=acme.com; dkim=pass header.d=acme.com",),
         "no dmarc=pass"),
        (("mx.acme.com; dmarc=pass header.from=evil.example",), "no dmarc=pass"),
        (("mx.acme.com; dmarc=pass",), "no dmarc=pass"),
        (("mx.acme.com; dmarc=pass header.from=mail.acme.com",), "no dmarc=pass"),
        (("mx.acme.com; auth=pass",), "no dmarc=pass"),
        (("mx.acme.com; auth=pass smtp.auth=eve@evil.example",), "submitted by eve@evil.example"),
        (("mx.acme.com; auth=pass smtp.auth=intern@acme.com",), "submitted by intern@acme.com"),
        (('mx.acme.com; auth=pass smtp.auth="alice smith"@acme.com',), "submitted by"),
        # Another acme.com mailbox passes DMARC as any CSM: who submitted it tells them apart.
        (("mx.acme.com; dkim=pass header.d=acme.com; dmarc=pass header.from=acme.com; "
          "auth=pass smtp.auth=intern",), "submitted by intern (smtp.auth), not by alice"),
        (("mx.acme.com; none",), "no dmarc=pass"),
        (('mx.acme.com; dkim=fail reason="dmarc=pass header.from=acme.com"',), "no dmarc=pass"),
        (("mx.acme.com; spf=neutral (dmarc=pass header.from=acme.com) smtp.mailfrom=acme.com",),
         "no dmarc=pass"),
        (("evil.example; dmarc=pass header.from=acme.com",), "no Authentication-Results from"),
        (("mx.acme.com.evil.example; dmarc=pass header.from=acme.com",),
         "no Authentication-Results from"),
        (("mx.acme.com.; dmarc=pass header.from=acme.com",), "no Authentication-Results from"),
        ((), "no Authentication-Results from"),
        # Read leniently, an unclosed comment or quote would hide the rest of the header.
        (("mx.acme.com; dmarc=pass header.from=acme.com; spf=pass smtp.mailfrom=x(y@z; "
          "dmarc=fail header.from=acme.com",), "unreadable"),
        (('mx.acme.com; dmarc=pass header.from=acme.com; spf=pass smtp.mailfrom="x@z; '
          "dmarc=fail header.from=acme.com",), "unreadable"),
        (("mx.acme.com; dmarc=pass header.from=acme.com) x",), "unreadable"),
    ],
)
def test_anything_else_is_refused(results: tuple[str, ...], why: str) -> None:
    verdict = verify_sender(mail(*results), "mx.acme.com")
    assert not verdict.verified and why in verdict.why, verdict.why


def test_an_encoded_envelope_sender_cannot_hide_the_servers_dmarc_fail() -> None:
    # The sender's RFC 2047 text, copied into the server's result: decoded, it would read
    # "x;dmarc=pass header.from=acme.com (" and the "(" would swallow the server's verdict.
    header = (f"mx.acme.com; spf=pass smtp.mailfrom={ENCODED_SENDER}; "
              "dmarc=fail header.from=acme.com")
    msg = mail(header)
    assert "dmarc=pass header.from=acme.com (" in (msg.header("Authentication-Results") or "")
    verdict = verify_sender(msg, "mx.acme.com")
    assert not verdict.verified and verdict.why == "dmarc=fail for acme.com"
    no_dmarc = mail(f"mx.acme.com; spf=pass smtp.mailfrom={ENCODED_SENDER}; dmarc=none")
    assert not verify_sender(no_dmarc, "mx.acme.com").verified


def test_headers_are_read_undecoded_and_unfolded() -> None:
    raw = (b"Authentication-Results: mx.acme.com;\r\n\tdmarc=pass\r\n header.from=acme.com\r\n"
           b"From: =?utf-8?q?Alice?= <alice@acme.com>\r\nSubject: x\r\n"
           b"Message-ID: <a@acme.com>\r\n\r\nhi\r\n")
    assert verify_sender(parse(raw), "mx.acme.com").verified
    assert raw_headers(raw, "from") == ["=?utf-8?q?Alice?= <alice@acme.com>"]


def test_a_forged_header_below_the_trusted_servers_own_does_not_help() -> None:
    forged = mail("mx.acme.com; dmarc=fail header.from=acme.com",
                  "mx.acme.com; dmarc=pass header.from=acme.com")
    verdict = verify_sender(forged, "mx.acme.com")
    assert not verdict.verified and "dmarc=fail" in verdict.why


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


@pytest.mark.parametrize(
    "results",
    [
        (),
        ("mx.evil.example; dmarc=pass header.from=acme.com",),
        ("mx.acme.com; dmarc=pass header.from=acme.com; auth=pass smtp.auth=alice",),
    ],
)
def test_without_a_pinned_server_no_header_proves_anything(results: tuple[str, ...]) -> None:
    verdict = verify_sender(mail(*results), None)
    assert not verdict.verified and NOT_SET in verdict.why


def test_dmarc_fail_refuses_even_an_authenticated_submission() -> None:
    both = mail("mx.acme.com; auth=pass smtp.auth=alice@acme.com; "
                "dkim=pass header.d=acme.com; dmarc=fail header.from=acme.com")
    verdict = verify_sender(both, "mx.acme.com")
    assert not verdict.verified and verdict.why == "dmarc=fail for acme.com"


def test_the_reply_address_proves_only_its_csm_in_its_thread() -> None:
    alias, secret = "success@acme.com", "a-secret-of-the-site-0123456789"
    own = reply_address(alias, secret, "alice@acme.com", 1042)
    cc = f"Cc: {own}\r\n"
    raw = (f"From: alice@acme.com\r\nTo: dana@customer.example\r\n{cc}Subject: x\r\n"
           "Message-ID: <a@acme.com>\r\n\r\nhi\r\n")
    assert verify_reply_address(parse(raw.encode()), alias, secret, 1042).verified
    assert not verify_reply_address(parse(raw.encode()), alias, secret, 1043).verified
    assert not verify_reply_address(parse(raw.encode()), alias, secret, None).verified
    as_bob = parse(raw.replace("From: alice", "From: bob").encode())
    assert not verify_reply_address(as_bob, alias, secret, 1042).verified


def test_the_steering_note_names_the_mode_in_use() -> None:
    assert "mx.acme.com's topmost" in steering_note("mx.acme.com", False)
    both = steering_note("mx.acme.com", True)
    assert "CSM mail steers only by copying" in both and "Support mail steers" in both
    assert "Support mail steers nothing" in steering_note(None, True)
    assert "steers nothing" in steering_note(None, False)


def test_the_authserv_note_reads_the_id_undecoded() -> None:
    assert authserv_note("mx.acme.com; dmarc=pass", "MX.acme.com", False) == (
        True, "the latest mail's topmost Authentication-Results is from mx.acme.com")
    fine, said = authserv_note("(hop) mx.other.example 1; none", None, False)
    assert not fine and "set ROUTER_TRUSTED_AUTHSERV_ID=mx.other.example" in said
    fine, said = authserv_note(None, None, True)
    assert not fine and "unless proven by ROUTER_REPLY_SECRET" in said


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
