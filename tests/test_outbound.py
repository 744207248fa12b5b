"""The forward a CSM receives, rendered from a real parsed message."""

from __future__ import annotations

import email
import email.policy
import hashlib
from datetime import UTC, datetime
from email.message import EmailMessage

import aiosmtplib
import pytest

from csm_router.config import Address, PoolMember, parse_server_url
from csm_router.core.message import parse
from csm_router.demo.relay import RecordingSmtp
from csm_router.errors import PermanentError
from csm_router.mail.outbound import (
    EarlierThread,
    Mailer,
    forward_message_id,
    render_forward,
    smtp_error,
)

RAW = (
    b"From: =?utf-8?q?J=C3=B6rg_M=C3=BCller?= <jorg@globex.com>\r\n"
    b"To: success@acme.com\r\n"
    b"Subject: Invoice question\r\n"
    b"Message-ID: <orig-1@globex.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlease see the attached PDF.\r\n"
    b"--b\r\nContent-Type: application/pdf\r\n"
    b'Content-Disposition: attachment; filename="invoice.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n"
)
ALIAS = Address("success@acme.com", "Acme Customer Success")
ALICE = PoolMember("alice@acme.com", "Alice Smith", 2)


def render(**kw: object) -> email.message.EmailMessage:
    args: dict[str, object] = {
        "ref": 1042,
        "owner": ALICE,
        "alias": ALIAS,
        "why": "new thread, next in the round-robin",
        "message_id": forward_message_id("k1", ALICE.address, "acme.com", secret=b"k"),
        "due": datetime(2026, 11, 23, 16, 30, tzinfo=UTC),
        "sla_minutes": 60,
    }
    out = render_forward(parse(RAW), **(args | kw))  # type: ignore[arg-type]
    # Round-trip through bytes as the CSM's mail client would see it.
    return email.message_from_bytes(out.as_bytes(), policy=email.policy.default)  # type: ignore[return-value]


def test_headers_follow_the_product_format() -> None:
    fwd = render()
    assert fwd["Subject"] == "[CS-1042] Invoice question"
    assert fwd["From"].addresses[0].display_name == "Jörg Müller via Acme Customer Success"
    assert fwd["From"].addresses[0].addr_spec == "success@acme.com"
    assert [a.addr_spec for a in fwd["Reply-To"].addresses] == [
        "jorg@globex.com", "success@acme.com"]
    assert fwd["To"].addresses[0].addr_spec == "alice@acme.com"
    assert fwd["X-CSM-Router"] == "forward CS-1042"


def test_a_forward_answers_the_customers_message() -> None:
    fwd = render()
    assert fwd["In-Reply-To"] == "<orig-1@globex.com>"
    assert fwd["References"] == "<orig-1@globex.com>"


def test_context_block_and_original_text() -> None:
    earlier = [EarlierThread("CS-1007", "Renewal", "bob@acme.com", "closed")]
    body = render(earlier=earlier).get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "account globex.com" in body
    assert "Why you: new thread, next in the round-robin" in body
    assert "Answer due: 2026-11-23 16:30 UTC (first-response target 60 min)" in body
    assert "[CS-1007] Renewal · bob@acme.com · closed" in body
    assert "Please see the attached PDF." in body
    assert "Attachments: invoice.pdf" in body


def test_original_attachments_travel_with_the_forward() -> None:
    (attachment,) = list(render().iter_attachments())
    assert attachment.get_filename() == "invoice.pdf"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == b"%PDF-1.4\n"


def test_later_forwards_thread_under_the_earlier_ones() -> None:
    fwd = render(previous=["<fwd.a@acme.com>", "<fwd.b@acme.com>"])
    assert fwd["In-Reply-To"] == "<orig-1@globex.com>"
    # Oldest first, the customer's message last, as RFC 5322 orders References.
    assert fwd["References"] == "<fwd.a@acme.com> <fwd.b@acme.com> <orig-1@globex.com>"


def test_references_name_the_customers_message_once() -> None:
    fwd = render(previous=["<fwd.a@acme.com>", "<orig-1@globex.com>"])
    assert fwd["References"] == "<fwd.a@acme.com> <orig-1@globex.com>"


def test_forward_ids_are_deterministic_per_message_and_owner() -> None:
    one = forward_message_id("k1", "alice@acme.com", "acme.com", secret=b"k")
    assert one == forward_message_id("k1", "alice@acme.com", "acme.com", secret=b"k")
    assert one != forward_message_id("k1", "bob@acme.com", "acme.com", secret=b"k")
    assert one.endswith("@acme.com>")


def test_forward_ids_are_keyed_so_nobody_computes_them_from_public_data() -> None:
    one = forward_message_id("k1", "alice@acme.com", "acme.com", secret=b"k")
    assert one != forward_message_id("k1", "alice@acme.com", "acme.com", secret=b"other")
    unkeyed = hashlib.sha256(b"alice@acme.com\0").hexdigest()[:8]  # the id as it was
    assert one != f"<fwd.k1.{unkeyed}@acme.com>"


HTML_RAW = (
    b"From: Jane <jane@globex.com>\r\nTo: success@acme.com\r\nSubject: Chart\r\n"
    b"Message-ID: <html-1@globex.com>\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/related; boundary="r"\r\n\r\n'
    b"--r\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    b"<html><head><script>alert(1)</script></head><body><table><tr><td>Q3</td></tr></table>"
    b'<img src="cid:chart@globex"></body></html>\r\n'
    b"--r\r\nContent-Type: image/png\r\nContent-ID: <chart@globex>\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--r--\r\n"
)


def test_html_mail_keeps_its_formatting_and_inline_images() -> None:
    fwd = render_forward(parse(HTML_RAW), **{  # type: ignore[arg-type]
        "ref": 7, "owner": ALICE, "alias": ALIAS, "why": "a <b>bold</b> reason",
        "message_id": "<f@acme.com>", "due": None, "sla_minutes": 60})
    back = email.message_from_bytes(fwd.as_bytes(), policy=email.policy.default)
    plain = back.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = back.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "Q3" in plain and "<table>" not in plain
    assert "<table><tbody><tr><td>Q3</td></tr></tbody></table>" in html
    assert "a &lt;b&gt;bold&lt;/b&gt; reason" in html  # context escaped, customer HTML kept
    assert "alert(1)" not in html
    related = [p for p in back.walk() if p.get("Content-ID") == "<chart@globex>"]
    assert len(related) == 1 and related[0].get_content() == b"\x89PNG\r\n\x1a\n"
    assert list(back.iter_attachments()) == []  # the image stays inline, not an attachment


def _notice(n: int) -> EmailMessage:
    out = EmailMessage()
    out["From"], out["To"], out["Subject"] = "success@acme.com", "alice@acme.com", f"n{n}"
    out["Message-ID"] = f"<n{n}@acme.com>"
    out.set_content("hello\n")
    return out


def test_a_mailer_sends_on_one_connection_and_reconnects_after_the_relay_restarts() -> None:
    with RecordingSmtp() as relay:
        url = parse_server_url(relay.url, ("smtp", "smtps"))
        mailer = Mailer(url, idle_check=0)  # a NOOP before every reuse
        for n in range(3):
            mailer.send(_notice(n), ["alice@acme.com"], sender="success@acme.com")
        assert len({r.connection for r in relay.messages}) == 1
        port = relay.port
        relay.stop()
        relay.start(port=port)
        mailer.send(_notice(3), ["alice@acme.com"], sender="success@acme.com")
        mailer.close()
        assert len(relay.messages) == 4
        assert len({r.connection for r in relay.messages}) == 2


def test_a_mailer_refused_for_good_says_so_and_goes_on() -> None:
    with RecordingSmtp() as relay:
        mailer = Mailer(parse_server_url(relay.url, ("smtp", "smtps")))
        relay.fail_next(550, "5.1.1 no such mailbox")
        with pytest.raises(PermanentError, match="550"):
            mailer.send(_notice(0), ["alice@acme.com"], sender="success@acme.com")
        mailer.send(_notice(1), ["alice@acme.com"], sender="success@acme.com")
        mailer.close()
        assert [str(r.message["Subject"]) for r in relay.messages] == ["n1"]


def test_a_refused_smtp_login_says_what_to_fix() -> None:
    url = parse_server_url("smtp://mailer:secret@smtp.acme.com:587", ("smtp", "smtps"))
    error = smtp_error(aiosmtplib.SMTPAuthenticationError(535, "5.7.8 bad credentials"), url)
    assert isinstance(error, PermanentError)
    assert "check the user and password in ROUTER_SMTP_URL" in str(error)
    assert "secret" not in str(error)
