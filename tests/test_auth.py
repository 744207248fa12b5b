"""Sender authentication from Authentication-Results (RFC 8601)."""

from __future__ import annotations

import pytest

from csm_router.auth import verify_sender
from csm_router.message import Inbound, parse


def mail(*results: str, sender: str = "alice@acme.com") -> Inbound:
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
    ],
)
def test_aligned_pass_from_the_trusted_server_verifies(result: str) -> None:
    assert verify_sender(mail(result), "mx.acme.com").verified


@pytest.mark.parametrize(
    ("results", "why"),
    [
        (("mx.acme.com; dmarc=fail header.from=acme.com",), "no passing"),
        (("mx.acme.com; dkim=pass header.d=evil.example",), "no passing"),
        (("mx.acme.com; spf=pass smtp.mailfrom=evil.example",), "no passing"),
        (("mx.acme.com; auth=pass smtp.auth=eve@evil.example",), "no passing"),
        (("evil.example; dmarc=pass header.from=acme.com",), "no Authentication-Results from"),
        ((), "no Authentication-Results from"),
    ],
)
def test_anything_else_is_refused_when_a_server_is_trusted(
    results: tuple[str, ...], why: str
) -> None:
    verdict = verify_sender(mail(*results), "mx.acme.com")
    assert not verdict.verified and why in verdict.why


def test_a_forged_header_below_the_real_one_does_not_help() -> None:
    forged = mail("mx.acme.com; dmarc=fail header.from=acme.com",
                  "mx.acme.com; dmarc=pass header.from=acme.com")
    # Without a trusted id only the topmost (the delivering server's) header counts.
    assert not verify_sender(forged, None).verified


def test_without_a_trusted_server_mail_without_results_is_taken_at_its_word() -> None:
    assert verify_sender(mail(), None).verified
    assert verify_sender(mail("mx.x; dmarc=pass header.from=acme.com"), None).verified
