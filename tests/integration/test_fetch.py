"""Fetching from a real Dovecot: sizes first, and oversized mail quarantined unread."""

from __future__ import annotations

import pytest

from support.product import ALICE, BOB, CAROL, Product, customer_mail
from support.servers import Mailbox as ServerMailbox
from support.servers import fetch_with_limit

pytestmark = pytest.mark.integration


def test_fetch_from_dovecot_yields_none_for_an_oversized_message(mailbox: ServerMailbox) -> None:
    small = customer_mail("Jane <jane@globex.com>", "Small")[1]
    mailbox.deliver(small)
    mailbox.deliver(customer_mail("Joe <joe@initech.io>", "Large", "x" * 50_000 + "\n")[1])
    mailbox.deliver(small)
    uids, got = fetch_with_limit(mailbox.imap_url, 20_000)
    assert [uid for uid, _ in got] == uids and len(uids) == 3
    first, large, last = (raw for _, raw in got)
    assert large is None
    # Dovecot prepends its trace headers; the delivered message follows unchanged.
    assert first is not None and small.replace(b"\n", b"\r\n") in first
    assert last is not None and small.replace(b"\n", b"\r\n") in last


def test_oversized_mail_is_quarantined_without_being_fetched(product: Product) -> None:
    product.env["ROUTER_MAX_MESSAGE_BYTES"] = "20000"
    product.write("Jane Doe <jane@globex.com>", "Small question")
    product.write("Joe Roe <joe@initech.io>", "Huge logs", "x" * 50_000 + "\n")
    sent = product.route()
    assert [r.rcpt_tos[0] in (ALICE, BOB, CAROL) for r in sent] == [True]
    assert "over ROUTER_MAX_MESSAGE_BYTES (20000 bytes): not fetched" in product.logs[0]

    client = product.mailbox.imap_client()
    client.select_folder("Quarantine", readonly=True)
    (copied,) = client.fetch(client.search("ALL"), ["BODY.PEEK[]"]).values()
    assert b"Subject: Huge logs" in copied[b"BODY[]"]
    client.select_folder("INBOX", readonly=True)
    flags = client.get_flags(client.search("ALL"))
    assert [b"$CsmQuarantined" in f for _, f in sorted(flags.items())] == [False, True]
    assert product.route() == []  # handled once: the checkpoint moved past it
