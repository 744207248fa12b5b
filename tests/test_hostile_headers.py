"""Hostile header text: made safe when parsed, bounded before the product writes it back."""

from __future__ import annotations

import json
import tracemalloc
from email import message_from_bytes, policy
from email.message import EmailMessage

import aiosmtplib
import pytest

from csm_router.config import Address, PoolMember, parse_server_url
from csm_router.core.message import Inbound, parse
from csm_router.demo.relay import RecordingSmtp
from csm_router.errors import PermanentError, UnsendableError
from csm_router.mail.headers import MAX_LINE, check_lines, header_text
from csm_router.mail.outbound import Mailer, render_forward, render_notice, smtp_error

ALIAS = Address("success@acme.com", "Acme Customer Success")
ALICE = PoolMember("alice@acme.com", "Alice Smith")
# Everything str.splitlines() breaks at (the email package refuses to write it), and more.
REFUSED = "\u2028\u2029\x85\x0b\x0c\x1c\x1d\x1e\x01\x7f\x9f"


def mail(*headers: str, body: str = "Hello,\r\n\r\nCould you help?\r\n") -> bytes:
    lines = ["To: success@acme.com", "Message-ID: <m-1@globex.com>", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode("utf-8")


def forward(msg: Inbound) -> bytes:
    out = render_forward(msg, ref=1042, owner=ALICE, alias=ALIAS, why="new thread",
                         message_id="<fwd.1@acme.com>", due=None, sla_minutes=60)
    return out.as_bytes(policy=policy.SMTP)


def header_lines(data: bytes) -> list[bytes]:
    """Every line of every header block (top level and MIME parts) of a serialized mail."""
    found, in_header = [], True
    for line in data.split(b"\r\n"):
        if in_header:
            found.append(line)
            in_header = line != b""
        elif line.startswith(b"--"):
            in_header = True  # a boundary: the part's headers follow
    return found


def has_no_refused_text(*values: str) -> bool:
    return not any(c in value for value in values for c in REFUSED)


def test_encoded_line_separator_in_the_sender_name_is_a_space() -> None:
    msg = parse(mail("From: =?utf-8?q?Jane=E2=80=A8Doe?= <jane@globex.com>", "Subject: Hi"))
    assert msg.sender_name == "Jane Doe"
    assert msg.sender == "jane@globex.com"
    assert b'"Jane Doe via Acme Customer Success"' in forward(msg)


@pytest.mark.parametrize("char", list(REFUSED))
def test_every_refused_character_is_made_safe_wherever_a_forward_carries_it(char: str) -> None:
    encoded = "".join(f"={b:02X}" for b in char.encode())
    raw = mail(
        f"From: =?utf-8?q?Jane{encoded}Doe?= <jane@globex.com>",
        f"Subject: =?utf-8?q?Export{encoded}broken?=",
        "MIME-Version: 1.0",
        'Content-Type: multipart/related; boundary="b"',
        body=("--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>see <img src=x></p>\r\n"
              "--b\r\nContent-Type: image/png\r\n"
              f"Content-ID: <=?utf-8?q?img{encoded}1?=@globex.com>\r\n"
              f"Content-Disposition: inline; filename=\"=?utf-8?q?chart{encoded}1.png?=\"\r\n"
              "Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--b--\r\n"),
    )
    msg = parse(raw)
    (image,) = msg.attachments
    assert has_no_refused_text(msg.sender_name, msg.subject, image.filename,
                               image.content_id or "", *(v for _, v in msg.headers))
    data = forward(msg)  # the email package writes every header it is given
    sent = message_from_bytes(data, policy=policy.default)
    assert "Jane" in str(sent["From"]) and "Export" in str(sent["Subject"])
    assert all(len(line) <= MAX_LINE for line in header_lines(data))


def test_utf7_lone_surrogate_in_the_message_id_becomes_valid_text() -> None:
    msg = parse(mail("From: jane@globex.com", "Subject: Hi").replace(
        b"<m-1@globex.com>", b"=?utf-7?q?+2D0-x@y.example?="))
    assert msg.message_id == "<\ufffdx@y.example>"
    # What the scripts are given must decode as JSON anywhere, and encode as UTF-8.
    assert json.loads(json.dumps(msg.message_id)) == msg.message_id
    msg.message_id.encode("utf-8")


def test_lone_surrogates_reach_no_field() -> None:
    raw = mail("From: =?utf-7?q?Jane+2D0-?= <jane@globex.com>",
               "Subject: =?utf-7?q?Help+2D0-me?=", "In-Reply-To: =?utf-7?q?+2D0-a@b?=")
    msg = parse(raw)
    for value in (msg.sender_name, msg.subject, *msg.in_reply_to, *(v for _, v in msg.headers)):
        value.encode("utf-8")  # raises on a lone surrogate


def test_a_five_thousand_character_name_is_shortened_and_every_header_line_fits() -> None:
    msg = parse(mail(f"From: {'Jane' * 1250} <jane@globex.com>", "Subject: Hi"))
    assert len(msg.sender_name) <= 200 and msg.sender_name.endswith("\u2026")
    data = forward(msg)
    assert all(len(line) <= MAX_LINE for line in header_lines(data))
    sent = message_from_bytes(data, policy=policy.default)
    (sender,) = sent["From"].addresses
    assert sender.display_name.startswith("JaneJane")
    assert sender.display_name.endswith("\u2026 via Acme Customer Success")
    assert sent["Reply-To"].addresses[0].addr_spec == "jane@globex.com"


def test_a_long_subject_is_shortened_with_an_ellipsis_reference_first() -> None:
    msg = parse(mail("From: jane@globex.com", "Subject: " + "word " * 2000))
    sent = message_from_bytes(forward(msg), policy=policy.default)
    subject = str(sent["Subject"])
    assert subject.startswith("[CS-1042] word word") and subject.endswith("\u2026")
    assert len(subject) <= 200


def _peak_bytes(words: int) -> int:
    subject = " ".join(["=?utf-8?q?abc=C3=A9?="] * words)
    raw = mail("From: Jane <jane@globex.com>", f"Subject: {subject}")
    tracemalloc.start()
    try:
        msg = parse(raw)
        data = forward(msg)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        assert b"[CS-1042] abc\xc3\xa9" in data or b"[CS-1042] =?utf-8?" in data


def test_a_subject_of_100000_encoded_words_costs_memory_linear_in_its_size() -> None:
    # The email package re-parsing such a subject took 485 MB at 8,000 words; now the
    # subject is decoded once, linearly, and shortened before any header is set.
    small, large = _peak_bytes(10_000), _peak_bytes(100_000)  # 145 KB and 1.45 MB of words
    assert large < 60 * 1024 * 1024
    assert large < 15 * small  # ten times the words, about ten times the memory


def test_encoded_words_in_the_decoded_subject_are_never_decoded_into_headers() -> None:
    # Decoded once, this subject reads "=?utf-8?q?a=0AX-Injected:_1?=": the email package
    # would decode that again and write its line break, injecting a header.
    inner = "=3D=3Futf-8=3Fq=3Fa=3D0AX-Injected=3A_1=3F=3D"
    msg = parse(mail("From: jane@globex.com", f"Subject: =?utf-8?q?{inner}?="))
    assert "=?utf-8?q?a=0AX-Injected" in msg.subject
    sent = message_from_bytes(forward(msg), policy=policy.default)
    assert sent["X-Injected"] is None
    assert "X-Injected" in str(sent["Subject"])


def test_notices_bound_what_they_carry_of_the_customer() -> None:
    customer = str(Address("jane@globex.com", "J" * 5000))
    out = render_notice("support_customer_note.txt.j2", sender=ALIAS, to=[customer],
                        subject="Re: [CS-1042] " + "x" * 3000, message_id="<n.1@acme.com>",
                        in_reply_to="<" + "y" * 3000 + "@globex.com>", name="J" * 5000,
                        ref="CS-1042", alias_name="Acme")
    data = out.as_bytes(policy=policy.SMTP)
    assert all(len(line) <= MAX_LINE for line in header_lines(data))
    assert out["In-Reply-To"] is None  # no client threads on an id nobody can write
    assert out["To"].addresses[0].addr_spec == "jane@globex.com"


def test_header_text_is_one_bounded_line() -> None:
    assert header_text("a\u2028b\x0bc   d", 100) == "a b c d"
    assert header_text("x" * 500, 10) == "x" * 9 + "\u2026"


def test_a_header_line_over_998_characters_is_unsendable() -> None:
    out = render_notice("notice.txt.j2", sender=ALIAS, to=["jane@globex.com"],
                        subject="Hi", message_id="<n.2@acme.com>", text="x")
    out["X-Long"] = "y" * 2000
    out.policy = out.policy.clone(max_line_length=0)  # a writer that does not fold
    with pytest.raises(UnsendableError, match="X-Long"):
        check_lines(out)


def test_a_mailer_sends_no_header_line_a_relay_would_refuse_and_goes_on() -> None:
    def notice(n: int) -> EmailMessage:
        return render_notice("notice.txt.j2", sender=ALIAS, to=["jane@globex.com"],
                             subject=f"n{n}", message_id=f"<n.{n}@acme.com>", text="x")

    too_long = notice(0)
    too_long["X-Long"] = "y" * 2000
    too_long.policy = too_long.policy.clone(max_line_length=0)
    with RecordingSmtp() as relay:
        mailer = Mailer(parse_server_url(relay.url, ("smtp", "smtps")))
        with pytest.raises(UnsendableError, match="998"):
            mailer.send(too_long, ["jane@globex.com"], sender="success@acme.com")
        mailer.send(notice(1), ["jane@globex.com"], sender="success@acme.com")
        mailer.close()
        assert [str(r.message["Subject"]) for r in relay.messages] == ["n1"]


def test_content_refused_after_data_is_unsendable_a_refused_recipient_is_not() -> None:
    smtp = parse_server_url("smtp://relay.example:25", ("smtp", "smtps"))
    refused = smtp_error(aiosmtplib.SMTPDataError(554, "5.6.0 message content rejected"), smtp)
    assert isinstance(refused, UnsendableError)
    bounced = smtp_error(aiosmtplib.SMTPRecipientsRefused(
        [aiosmtplib.SMTPRecipientRefused(550, "no such user", "bob@acme.com")]), smtp)
    assert isinstance(bounced, PermanentError) and not isinstance(bounced, UnsendableError)
    busy = smtp_error(aiosmtplib.SMTPDataError(451, "try later"), smtp)
    assert not isinstance(busy, PermanentError)


@pytest.mark.parametrize(("code", "text", "content"), [
    (554, "5.6.0 Message content rejected", True),
    (552, "5.3.4 Message too big for system", True),
    (552, "5.2.3 Message length exceeds administrative limit", True),
    (500, "Line too long.", True),
    (554, "Transaction failed: spam", True),
    (550, "5.1.1 mailbox unavailable", False),
    (552, "5.2.2 Mailbox full", False),
    (550, "Requested action not taken: mailbox unavailable", False),
])
def test_refusals_after_data_are_told_apart_by_what_they_refuse(
    code: int, text: str, content: bool
) -> None:
    smtp = parse_server_url("smtp://relay.example:25", ("smtp", "smtps"))
    error = smtp_error(aiosmtplib.SMTPDataError(code, text), smtp)
    assert isinstance(error, PermanentError)
    assert isinstance(error, UnsendableError) is content


def test_a_forwarded_delivery_status_attachment_is_carried_as_text() -> None:
    report = ("Reporting-MTA: dns; mx.globex.com\r\n\r\nFinal-Recipient: rfc822; x@y.example\r\n"
              "Action: failed\r\nStatus: 5.1.1\r\n")
    raw = mail("From: Jane <jane@globex.com>", "Subject: Why did this bounce?",
               "MIME-Version: 1.0", 'Content-Type: multipart/mixed; boundary="b"',
               body=("--b\r\nContent-Type: text/plain\r\n\r\nSee the report.\r\n"
                     "--b\r\nContent-Type: message/delivery-status\r\n"
                     "Content-Disposition: attachment; filename=status.txt\r\n\r\n"
                     f"{report}--b--\r\n"))
    sent = message_from_bytes(forward(parse(raw)), policy=policy.default)
    (carried,) = [p for p in sent.walk() if p.get_filename() == "status.txt"]
    assert carried.get_content_type() == "text/plain"
    assert "Status: 5.1.1" in carried.get_content()


def test_a_mail_the_email_package_cannot_write_is_unsendable_and_the_mailer_goes_on() -> None:
    unwritable = render_notice("notice.txt.j2", sender=ALIAS, to=["jane@globex.com"],
                               subject="n0", message_id="<n.0@acme.com>", text="x")
    unwritable.add_attachment(b"Action: failed\r\n", maintype="message",
                              subtype="delivery-status")  # written only from header blocks
    fine = render_notice("notice.txt.j2", sender=ALIAS, to=["jane@globex.com"],
                         subject="n1", message_id="<n.1@acme.com>", text="x")
    with RecordingSmtp() as relay:
        mailer = Mailer(parse_server_url(relay.url, ("smtp", "smtps")))
        with pytest.raises(UnsendableError, match="cannot be written"):
            mailer.send(unwritable, ["jane@globex.com"], sender="success@acme.com")
        mailer.send(fine, ["jane@globex.com"], sender="success@acme.com")
        mailer.close()
        assert [str(r.message["Subject"]) for r in relay.messages] == ["n1"]
