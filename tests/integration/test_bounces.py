"""A forward that bounces after the relay took it moves its thread, end to end on real servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from csm_router.demo.relay import Received
from support.product import ALICE, BOB, CAROL, Product, body_of

pytestmark = pytest.mark.integration

POOL = {ALICE, BOB, CAROL}
LEAD = "cs-lead@acme.com"
BOUNCE = Path("/work/shared/corpus/bounces/sisimai/bsd-lf/lhost-postfix-01.eml")


def report_to(return_address: str, csm: str) -> bytes:
    """A real Postfix delivery report, as if it came back for our forward to `csm`."""
    raw = BOUNCE.read_bytes()
    head, sep, body = raw.partition(b"\n\n")
    lines = [line for line in head.split(b"\n") if not line.lower().startswith(
        (b"to:", b"delivered-to:", b"x-original-to:", b"return-path:"))]
    body = body.replace(b"rfc822;kijitora@example.org", f"rfc822;{csm}".encode())
    return b"\n".join([f"To: {return_address}".encode(), *lines]) + sep + body


def bounce(product: Product, return_address: str, raw: bytes) -> None:
    """An MTA delivers a report by LMTP to the return address, with a null sender."""
    product.mailbox.server.deliver(return_address, raw, mail_from="")


def routed(product: Product) -> Received:
    product.write("Jane Doe <jane@globex.com>", "Renewal", "Hello, about the renewal?\n")
    (fwd,) = product.route()
    return fwd


def state(product: Product, ref: int) -> dict[str, str]:
    found = product.redis().hgetall(f"csm:thread:{ref}")
    return {k.decode(): v.decode() for k, v in found.items()}


def test_a_late_bounce_moves_the_thread_and_the_lead_hears_once(product: Product) -> None:
    fwd = routed(product)
    (owner,) = fwd.rcpt_tos
    local, _, domain = product.alias.partition("@")
    assert fwd.mail_from.startswith(f"{local}+b-") and fwd.mail_from.endswith(f"@{domain}")

    report = report_to(fwd.mail_from, owner)
    bounce(product, fwd.mail_from, report)
    sent = product.route()
    (moved,) = [r for r in sent if set(r.rcpt_tos) & (POOL - {owner})]
    assert f"could not be delivered to {owner}" in body_of(moved)
    (lead,) = [r for r in sent if r.rcpt_tos == [LEAD]]
    assert "CS-1001" in str(lead.message["Subject"]) + body_of(lead)
    assert state(product, 1001)["owner"] == moved.rcpt_tos[0]

    bounce(product, fwd.mail_from, report.replace(b"Message-Id: <", b"Message-Id: <again."))
    assert product.route() == []  # the same failure again: nobody hears twice
    assert state(product, 1001)["owner"] == moved.rcpt_tos[0]

    product.write("Omar <omar@initech.com>", "Pricing", "Hello, your pricing?\n")
    (nxt,) = product.route()
    assert str(nxt.message["Subject"]) == "[CS-1002] Pricing" and set(nxt.rcpt_tos) <= POOL


def test_a_forged_bounce_changes_nothing(product: Product) -> None:
    fwd = routed(product)
    (owner,) = fwd.rcpt_tos
    local, _, domain = product.alias.partition("@")
    token = fwd.mail_from[len(local) + len("+b-"):].partition("@")[0]
    msgkey = token.partition(".")[0]
    forged = f"{local}+b-{msgkey}.{'0' * 12}@{domain}"  # the forward's key, a guessed hash

    bounce(product, forged, report_to(forged, owner))
    assert product.route() == []
    assert state(product, 1001)["owner"] == owner
    assert "no forward we sent" in product.cli("thread", "CS-1001").stdout + str(
        product.redis().lrange("csm:recent", 0, 0))

    product.write("Omar <omar@initech.com>", "Pricing", "Hello, your pricing?\n")
    (nxt,) = product.route()
    assert str(nxt.message["Subject"]) == "[CS-1002] Pricing" and set(nxt.rcpt_tos) <= POOL
