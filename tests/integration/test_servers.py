"""Smoke tests proving the real-server fixtures in tests/conftest.py work."""

from __future__ import annotations

import time
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path

import pytest
import redis

from csm_router.config import parse_server_url
from csm_router.config import values as configvalues
from csm_router.errors import PermanentError
from csm_router.mail.mailbox import Mailbox as RouterMailbox
from support.servers import (
    DovecotServer,
    Mailbox,
    MissingServerBinary,
    find_binary,
)

pytestmark = pytest.mark.integration

_seen_users: list[str] = []


def make_raw(subject: str, body: str = "Hello from a customer.\n") -> bytes:
    msg = EmailMessage()
    msg["From"] = "Customer <customer@example.com>"
    msg["To"] = "success@acme.com"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}@example.com>"
    msg.set_content(body)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def test_lmtp_delivery_is_visible_over_imap(mailbox: Mailbox) -> None:
    raw = make_raw("Renewal question", "Can we talk about the renewal?\n")
    mailbox.deliver(raw)

    client = mailbox.imap_client()
    client.select_folder("INBOX", readonly=True)
    uids = client.search("ALL")
    assert len(uids) == 1
    fetched: bytes = client.fetch(uids, ["RFC822"])[uids[0]][b"RFC822"]
    # Dovecot prepends Return-Path/Delivered-To/Received like any MDA; the original follows.
    assert fetched.endswith(raw)
    assert b"Delivered-To: " + mailbox.user.encode() in fetched
    assert b"Subject: Renewal question\r\n" in fetched


def test_imap_url_and_login(dovecot: DovecotServer, mailbox: Mailbox) -> None:
    assert mailbox.imap_url == (
        f"imap://{mailbox.user.replace('@', '%40')}:{dovecot.password}"
        f"@127.0.0.1:{dovecot.imap_port}/INBOX"
    )
    assert dovecot.imap_url("a@b.c", "Archive/2024").endswith("/Archive%2F2024")


def test_idle_is_woken_by_delivery(mailbox: Mailbox) -> None:
    client = mailbox.imap_client()
    assert b"IDLE" in client.capabilities()
    client.select_folder("INBOX")
    client.idle()
    try:
        mailbox.deliver(make_raw("Wake up"))
        responses: list[tuple[object, ...]] = []
        deadline = time.monotonic() + 10
        while not any(r[1:2] == (b"EXISTS",) for r in responses):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no EXISTS during IDLE, got {responses}"
            responses += client.idle_check(timeout=remaining)
    finally:
        client.idle_done()
    assert (1, b"EXISTS") in responses


def test_uidvalidity_is_stable_across_reconnections(mailbox: Mailbox) -> None:
    mailbox.deliver(make_raw("First"))
    first = mailbox.imap_client()
    before = first.select_folder("INBOX")
    first.logout()
    mailbox.deliver(make_raw("Second"))
    after = mailbox.imap_client().select_folder("INBOX")
    assert after[b"UIDVALIDITY"] == before[b"UIDVALIDITY"]
    assert after[b"EXISTS"] == 2


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_a_fresh_mailbox(mailbox: Mailbox, run: int) -> None:
    assert mailbox.user not in _seen_users
    _seen_users.append(mailbox.user)
    client = mailbox.imap_client()
    assert client.select_folder("INBOX")[b"EXISTS"] == 0
    mailbox.deliver(make_raw(f"Run {run}"))


@pytest.mark.parametrize("run", [1, 2])
def test_redis_is_flushed_between_tests(redis_url: str, run: int) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
        client.set(f"left-over-{run}", "x")


def test_missing_binary_fails_with_hint(tmp_path: Path) -> None:
    with pytest.raises(MissingServerBinary, match="README"):
        find_binary("no-such-server", str(tmp_path / "no-such-server"))


def test_router_logs_in_to_dovecot_on_loopback_without_starttls(mailbox: Mailbox) -> None:
    # The test Dovecot runs with ssl=no on 127.0.0.1: plaintext is fine on this machine.
    box = RouterMailbox(parse_server_url(mailbox.imap_url, ("imap",)))
    box.connect()
    try:
        assert box.uidvalidity > 0
    finally:
        box.close()


def test_router_refuses_a_remote_imap_server_without_starttls(
    mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(configvalues, "is_loopback", lambda host: False)  # as if it were remote
    url = parse_server_url(mailbox.imap_url, ("imap",))
    with pytest.raises(PermanentError, match=r"^IMAP server 127\.0\.0\.1:\d+ offers no STARTTLS: "
                       r"refusing to send the password in the clear \(set ROUTER_ALLOW_PLAINTEXT"):
        RouterMailbox(url).connect()
    allowed = RouterMailbox(replace(url, allow_plaintext=True))
    allowed.connect()
    allowed.close()
