"""Threads over months, end to end: quiet threads close by themselves and free capacity,
named CSMs respect capacity, an overdue thread nobody can take is held, not lost."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import pytest

from support.product import ALICE, BOB, CAROL, Product, body_of

pytestmark = pytest.mark.integration
LEAD = "cs-lead@acme.com"


def at(seconds: float) -> str:
    """A `sweep --at` time this many seconds from now (UTC)."""
    return (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")


def new_thread(product: Product, customer: str, subject: str) -> tuple[str, str]:
    """A customer writes; answers the CSM who got the forward and its Message-ID."""
    product.write(customer, subject)
    (fwd,) = product.route()
    return fwd.rcpt_tos[0], str(fwd.message["Message-ID"])


def answer(product: Product, csm: str, ref: str, subject: str, customer: str,
           forward_id: str) -> None:
    """The CSM answers from their own client, copying the alias."""
    product.staff_writes(f"CSM <{csm}>", f"Re: [{ref}] {subject}", "Hi, here is how.\n",
                         to=customer, cc=product.alias, in_reply_to=forward_id)
    assert product.route() == []


def status(product: Product) -> dict[str, Any]:
    return dict(json.loads(product.cli("status", "--json").stdout))


def open_of(product: Product) -> dict[str, int]:
    return {row["address"]: row["open"] for row in status(product)["pool"]}


def test_a_quiet_answered_thread_closes_and_its_capacity_takes_a_held_thread(
    product: Product,
) -> None:
    product.env |= {"ROUTER_MAX_OPEN_PER_CSM": "1", "ROUTER_CLOSE_AFTER": "2s"}
    owners = [new_thread(product, f"C{n} <c{n}@customer{n}.com>", f"Question {n}")
              for n in range(3)]
    assert [o for o, _ in owners] == [ALICE, BOB, CAROL]
    product.write("Dana <dana@initech.com>", "Waiting in line")
    (told,) = product.route()  # everyone is full: held, the lead told
    assert told.rcpt_tos == [LEAD] and status(product)["held"] == 1

    answer(product, ALICE, "CS-1001", "Question 0", "c0@customer0.com", owners[0][1])
    out = product.cli("sweep", "--at", at(60)).stdout
    assert "1 closed" in out and "1 released" in out
    (released,) = product.route()
    assert released.rcpt_tos == [ALICE] and "[CS-1004] Waiting in line" in str(
        released.message["Subject"])
    thread = product.cli("thread", "CS-1001").stdout
    assert "closed" in thread and "quiet for 2s" in thread
    assert status(product)["held"] == 0 and open_of(product)[ALICE] == 1

    # Routing goes on: Bob's answered thread closes too, and the next customer gets Bob.
    answer(product, BOB, "CS-1002", "Question 1", "c1@customer1.com", owners[1][1])
    assert "1 closed" in product.cli("sweep", "--at", at(60)).stdout
    product.write("Erin <erin@hooli.com>", "Next one")
    (nxt,) = product.route()
    assert nxt.rcpt_tos == [BOB] and "[CS-1005]" in str(nxt.message["Subject"])


def test_the_customer_writing_after_closure_reopens_with_the_same_csm(product: Product) -> None:
    product.env["ROUTER_CLOSE_AFTER"] = "2s"
    owner, fwd_id = new_thread(product, "Jane Doe <jane@globex.com>", "Dashboard export")
    answer(product, owner, "CS-1001", "Dashboard export", "jane@globex.com", fwd_id)
    new_thread(product, "Other <joe@initech.com>", "Something else")  # the turn moves on
    assert "1 closed" in product.cli("sweep", "--at", at(60)).stdout
    assert open_of(product)[owner] == 0

    product.write("Jane Doe <jane@globex.com>", "Re: [CS-1001] Dashboard export",
                  body="Sorry, one more thing about the export.\n")
    (again,) = product.route()
    assert again.rcpt_tos == [owner] and "[CS-1001]" in str(again.message["Subject"])
    assert "owner of the thread, reopened" in body_of(again)
    assert "reopened" in product.cli("thread", "CS-1001").stdout
    assert open_of(product)[owner] == 1

    product.write("Erin <erin@hooli.com>", "Next one")
    (nxt,) = product.route()
    assert "[CS-1003]" in str(nxt.message["Subject"])


def test_an_onboarding_owner_at_capacity_does_not_get_the_new_thread(product: Product) -> None:
    product.env["ROUTER_MAX_OPEN_PER_CSM"] = "1"
    product.cli("assign", "globex.com", CAROL)
    assert new_thread(product, "Jane Doe <jane@globex.com>", "Setting up")[0] == CAROL

    product.write("Joe <joe@globex.com>", "Inviting the team")
    (second,) = product.route()
    assert second.rcpt_tos[0] in (ALICE, BOB)
    assert "carol@acme.com is full (1 open threads)" in body_of(second)
    assert open_of(product)[CAROL] == 1

    product.write("Erin <erin@hooli.com>", "Next one")
    (nxt,) = product.route()
    assert nxt.rcpt_tos[0] in (ALICE, BOB) and nxt.rcpt_tos != second.rcpt_tos


def test_an_overdue_thread_nobody_can_take_is_held_and_goes_out_first(
    product: Product,
) -> None:
    product.env["ROUTER_MAX_OPEN_PER_CSM"] = "1"
    owner, _ = new_thread(product, "Jane Doe <jane@globex.com>", "Dashboard export")
    assert owner == ALICE
    for csm in (ALICE, BOB, CAROL):  # the whole team at an offsite, say
        product.cli("away", csm)
    out = product.cli("sweep", "--at", at(61 * 60)).stdout
    assert "1 held" in out and "0 released" in out
    (lead,) = product.route()
    assert lead.rcpt_tos == [LEAD] and "CS-1001" in body_of(lead)
    assert "held until a CSM is available" in body_of(lead)
    seen = status(product)
    assert seen["held"] == 1 and all(r["overdue"] == 0 for r in seen["pool"])
    assert "held" in product.cli("thread", "CS-1001").stdout

    product.write("Later <later@initech.com>", "Came later")
    assert [r.rcpt_tos for r in product.route()] == [[LEAD]]  # held behind it, lead told
    assert status(product)["held"] == 2

    product.cli("back", BOB)
    (first,) = product.route()  # Bob has room for one: the overdue thread goes first
    assert first.rcpt_tos == [BOB] and "[CS-1001]" in str(first.message["Subject"])
    assert status(product)["held"] == 1
    product.cli("sweep", "--at", at(60))
    assert product.route() == []  # the lead is not told again

    product.cli("back", CAROL)
    (second,) = product.route()
    assert second.rcpt_tos == [CAROL] and "[CS-1002]" in str(second.message["Subject"])
    product.cli("back", ALICE)
    product.write("Erin <erin@hooli.com>", "Next one")
    (nxt,) = product.route()
    assert nxt.rcpt_tos == [ALICE] and "[CS-1003]" in str(nxt.message["Subject"])


def test_a_large_attachment_is_not_kept_in_redis_and_the_forward_says_where_it_is(
    product: Product,
) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"] = "Jane Doe <jane@globex.com>", product.alias
    msg["Subject"], msg["Message-ID"] = "Our export", "<export@globex.com>"
    msg.set_content("Hello,\n\nthe export is attached, with a screenshot.\n")
    msg.add_attachment(b"%PDF-1.4 " + bytes(range(256)) * 24_000, maintype="application",
                       subtype="pdf", filename="export.pdf")  # about 6 MB
    msg.add_attachment(b"\x89PNG small", maintype="image", subtype="png", filename="shot.png")
    product.deliver(msg.as_bytes())
    (fwd,) = product.route()
    names = [p.get_filename() for p in fwd.message.iter_attachments()]
    assert names == ["export.pdf (in the alias mailbox).txt", "shot.png"]
    (note,) = [p for p in fwd.message.iter_attachments() if "export.pdf" in str(p.get_filename())]
    assert "in the alias mailbox" in note.get_content() and len(fwd.data) < 1024 * 1024
    raws = [product.redis().strlen(k) for k in product.redis().scan_iter("csm:raw:*")]
    assert raws and max(raws) < 1024 * 1024
    assert "the export is attached" in body_of(fwd)

    product.write("Erin <erin@hooli.com>", "Next one")
    (nxt,) = product.route()
    assert "[CS-1002]" in str(nxt.message["Subject"])
