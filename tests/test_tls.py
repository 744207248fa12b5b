"""Passwords only travel encrypted: STARTTLS is required off this machine."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from email.message import EmailMessage

import pytest

from csm_router import config
from csm_router.config import is_loopback, parse_server_url
from csm_router.embedded import RecordingSmtp
from csm_router.errors import PermanentError
from csm_router.outbound import send


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("localhost", True), ("LOCALHOST.", True), ("127.0.0.1", True), ("127.8.9.10", True),
     ("::1", True), ("::ffff:127.0.0.1", True), ("imap.acme.com", False),
     ("192.0.2.2", False), ("10.0.0.1", False), ("::", False), ("localhost.acme.com", False),
     ("128.0.0.1", False)],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("url", "allow", "required"),
    [
        ("imap://u:p@imap.acme.com/INBOX", False, True),
        ("imap://u:p@imap.acme.com/INBOX", True, False),
        ("imaps://u:p@imap.acme.com/INBOX", False, False),  # implicit TLS: nothing to upgrade
        ("imap://u:p@127.0.0.1:1143/INBOX", False, False),
        ("smtp://u:p@smtp.acme.com:587", False, True),
        ("smtp://u:p@smtp.acme.com:587", True, False),
        ("smtps://u:p@smtp.acme.com", False, False),
        ("smtp://[::1]:2525", False, False),
    ],
)
def test_starttls_is_required_for_plain_urls_off_this_machine(
    url: str, allow: bool, required: bool
) -> None:
    parsed = parse_server_url(url, ("imap", "imaps", "smtp", "smtps"))
    assert replace(parsed, allow_plaintext=allow).starttls_required is required


def test_the_refusal_names_the_server_and_the_ways_out() -> None:
    url = parse_server_url("imap://u:secret@imap.acme.com/INBOX", ("imap",))
    assert url.plaintext_refused("IMAP") == (
        "IMAP server imap.acme.com:143 offers no STARTTLS: refusing to send the password in "
        "the clear (set ROUTER_ALLOW_PLAINTEXT=true to allow, or use imaps://)"
    )


@pytest.fixture
def relay() -> Iterator[RecordingSmtp]:
    with RecordingSmtp() as smtp:  # on 127.0.0.1, without STARTTLS
        yield smtp


def mail() -> EmailMessage:
    out = EmailMessage()
    out["From"], out["To"], out["Subject"] = "success@acme.com", "alice@acme.com", "Hi"
    out.set_content("Hello\n")
    return out


def test_a_relay_on_this_machine_may_go_without_starttls(relay: RecordingSmtp) -> None:
    url = parse_server_url(relay.url, ("smtp",))
    asyncio.run(send(mail(), url, ["alice@acme.com"], sender="success@acme.com"))
    assert [m.rcpt_tos for m in relay.messages] == [["alice@acme.com"]]


def test_a_remote_relay_without_starttls_is_refused_before_anything_is_sent(
    relay: RecordingSmtp, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "is_loopback", lambda host: False)  # as if it were remote
    url = parse_server_url(relay.url, ("smtp",))
    with pytest.raises(PermanentError, match=r"SMTP server 127\.0\.0\.1:\d+ offers no STARTTLS"):
        asyncio.run(send(mail(), url, ["alice@acme.com"], sender="success@acme.com"))
    assert relay.messages == []

    allowed = replace(url, allow_plaintext=True)
    asyncio.run(send(mail(), allowed, ["alice@acme.com"], sender="success@acme.com"))
    assert len(relay.messages) == 1
