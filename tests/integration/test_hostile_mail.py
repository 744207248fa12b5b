"""Hostile content end to end: no message stops the mailbox, and every customer is answered."""

from __future__ import annotations

import email.policy
from email import message_from_bytes

import pytest

from support.product import ALICE, BOB, Product

pytestmark = pytest.mark.integration

LEAD = "cs-lead@acme.com"


def raw_mail(*headers: str, body: str = "Hello,\r\n\r\nCould you help?\r\n") -> bytes:
    lines = ["To: success@acme.com", "Date: Wed, 02 Dec 2026 09:00:00 +0000", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode("utf-8")


def header_lines(data: bytes) -> list[bytes]:
    """Every line of every header block (top level and MIME parts) of a mail as sent."""
    found, in_header = [], True
    for line in data.replace(b"\r\n", b"\n").split(b"\n"):
        if in_header:
            found.append(line)
            in_header = line != b""
        elif line.startswith(b"--"):
            in_header = True
    return found


def next_customer_is_routed(product: Product) -> None:
    """Routing goes on: a plain customer's mail is forwarded, as always."""
    product.write("Next Customer <next@initech.com>", "A normal question")
    (forward,) = product.route()
    assert "A normal question" in str(forward.message["Subject"])
    assert forward.rcpt_tos[0] != LEAD


def test_refused_header_text_in_from_subject_and_content_id_is_forwarded(
    product: Product,
) -> None:
    image = ("--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
             "<p>Chart: <img src=\"cid:chart=E2=80=A81@globex.com\"></p>\r\n"
             "--b\r\nContent-Type: image/png\r\n"
             "Content-ID: <=?utf-8?q?chart=E2=80=A81?=@globex.com>\r\n"
             "Content-Disposition: inline; filename=\"=?utf-8?q?chart=0B1.png?=\"\r\n"
             "Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--b--\r\n")
    mails = [
        raw_mail("From: =?utf-8?q?Jane=E2=80=A8Doe?= <jane@globex.com>", "Subject: Export",
                 "Message-ID: <h-1@globex.com>"),
        raw_mail("From: Vera\x0bTab <vera@umbrella.com>", "Subject: Billing",
                 "Message-ID: <h-2@umbrella.com>"),
        raw_mail("From: Nel <nel@hooli.com>", "Subject: =?utf-8?q?Login=C2=85fails?=",
                 "Message-ID: <h-3@hooli.com>"),
        raw_mail("From: Cid <cid@stark.com>", "Subject: Chart", "Message-ID: <h-4@stark.com>",
                 "MIME-Version: 1.0", 'Content-Type: multipart/related; boundary="b"',
                 body=image),
    ]
    for raw in mails:
        product.deliver(raw)
    sent = product.route()
    assert sorted(str(r.message["Subject"]) for r in sent) == [
        "[CS-1001] Export", "[CS-1002] Billing", "[CS-1003] Login fails", "[CS-1004] Chart"]
    by_subject = {str(r.message["Subject"]): r for r in sent}
    assert by_subject["[CS-1001] Export"].message["From"].addresses[0].display_name == (
        "Jane Doe via Acme Customer Success")
    assert by_subject["[CS-1002] Billing"].message["From"].addresses[0].display_name == (
        "Vera Tab via Acme Customer Success")
    chart = by_subject["[CS-1004] Chart"].message
    (attachment,) = [p for p in chart.walk() if p.get_content_type() == "image/png"]
    assert attachment.get_filename() == "chart1.png"  # a control in a name is dropped
    for forward in sent:
        assert all(len(line) <= 998 for line in header_lines(forward.data))
    assert not any(r.rcpt_tos == [LEAD] for r in sent)  # nothing failed, nobody told
    next_customer_is_routed(product)


def test_a_utf7_message_id_does_not_stop_routing(product: Product) -> None:
    product.deliver(raw_mail("From: Uma <uma@globex.com>", "Subject: Seven bits",
                             "Message-ID: =?utf-7?q?+2D0-x@y.example?="))
    product.write("Jane Doe <jane@initech.com>", "Right after")
    sent = product.route()
    assert sorted(str(r.message["Subject"]) for r in sent) == [
        "[CS-1001] Seven bits", "[CS-1002] Right after"]
    thread = product.cli("thread", "CS-1001").stdout
    assert "uma@globex.com" in thread
    next_customer_is_routed(product)


def test_a_subject_of_100000_encoded_words_is_forwarded_shortened(product: Product) -> None:
    words = " ".join(["=?utf-8?q?abc=C3=A9?="] * 100_000)  # 2.2 MB, once decoded 400,000 chars
    product.deliver(raw_mail("From: Wordy <wordy@globex.com>", f"Subject: {words}",
                             "Message-ID: <words@globex.com>"))
    (forward,) = product.route()
    subject = str(forward.message["Subject"])
    assert subject.startswith("[CS-1001] abc\u00e9abc\u00e9") and subject.endswith("\u2026")
    assert len(subject) <= 200
    assert all(len(line) <= 998 for line in header_lines(forward.data))
    next_customer_is_routed(product)


def test_a_five_thousand_character_name_is_delivered_with_short_header_lines(
    product: Product,
) -> None:
    product.deliver(raw_mail(f"From: {'Jane' * 1250} <jane@globex.com>",
                             "Subject: Long name", "Message-ID: <long-name@globex.com>"))
    (forward,) = product.route()
    assert forward.rcpt_tos == [ALICE]
    lines = header_lines(forward.data)
    assert all(len(line) <= 998 for line in lines), max(map(len, lines))
    name = forward.message["From"].addresses[0].display_name
    assert name.startswith("JaneJane") and name.endswith("\u2026 via Acme Customer Success")
    assert forward.message["Reply-To"].addresses[0].addr_spec == "jane@globex.com"
    next_customer_is_routed(product)


def test_content_the_relay_refuses_is_quarantined_once_and_the_thread_stays(
    product: Product,
) -> None:
    product.write("Jane Doe <jane@globex.com>", "Refused content")
    product.smtp.fail_next(554, "5.6.0 Message content rejected")
    sent = product.route()
    # The forward was refused for what it carries: the lead is told, once; no other CSM
    # gets it (it would be refused there too).
    (told,) = sent
    assert told.rcpt_tos == [LEAD]
    text = told.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "in quarantine" in text and "5.6.0 Message content rejected" in text
    thread = " ".join(product.cli("thread", "CS-1001").stdout.split())  # unwrapped
    assert f"owner {ALICE}" in thread
    assert "quarantined by unsendable" in thread
    assert "554 5.6.0 Message content rejected" in thread
    assert product.route() == []  # nothing else owed: it never tours the pool
    worker_log = "\n".join(product.logs)
    assert "Traceback" not in worker_log
    product.write("Bob's Customer <c@hooli.com>", "Next one")
    (forward,) = product.route()
    assert forward.rcpt_tos == [BOB]
    assert message_from_bytes(forward.data, policy=email.policy.default)["Subject"] == (
        "[CS-1002] Next one")


def test_a_message_redis_refuses_is_quarantined_at_its_third_try_and_routing_goes_on(
    product: Product,
) -> None:
    # This customer's index is not what the scripts expect (say, damaged by hand): every
    # try to route their message fails on its data, never on the server.
    product.redis().set("csm:customer:eve@initech.com", "not a sorted set")
    eve = product.write("Eve <eve@initech.com>", "Stuck")
    product.write("Jane Doe <jane@globex.com>", "Right behind Eve")
    sent = product.route()  # one `run`: it retries, gives Eve's message up, goes on
    assert [str(r.message["Subject"]) for r in sent] == ["[CS-1001] Right behind Eve"]
    log = "\n".join(product.logs)
    assert f"{eve}: Redis refused its data" in log and "(try 2 of 3)" in log
    assert f"{eve} quarantined to Quarantine: routing it failed 3 times" in log
    client = product.mailbox.imap_client()
    assert client.select_folder("Quarantine", readonly=True)[b"EXISTS"] == 1
    next_customer_is_routed(product)
