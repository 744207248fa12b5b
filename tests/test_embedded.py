"""Tests for the embedded IMAP server and recording SMTP relay used by `csm-router demo`."""

from __future__ import annotations

import gc
import logging
import smtplib
import socket
import threading
from collections.abc import Iterator

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from csm_router.embedded import EmbeddedImap, Received, RecordingSmtp

USER = "success@acme.com"
PASSWORD = "pa:ss/w@rd"


def _raw(subject: str, body: str = "Hello from a customer.") -> bytes:
    return (
        f"From: Customer <customer@example.org>\r\n"
        f"To: {USER}\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@example.org>\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: 8bit\r\n"
        f"\r\n"
        f"{body}\r\n"
        f".a line starting with a dot\r\n"
        f"Grüße\r\n"
    ).encode()


@pytest.fixture
def imap() -> Iterator[EmbeddedImap]:
    with EmbeddedImap(USER, PASSWORD) as server:
        yield server


@pytest.fixture
def client(imap: EmbeddedImap) -> Iterator[IMAPClient]:
    conn = _connect(imap)
    yield conn
    conn.logout()


def _connect(imap: EmbeddedImap) -> IMAPClient:
    conn = IMAPClient(imap.host, port=imap.port, ssl=False, timeout=10)
    # Without it imapclient's multi-write commands stall on Nagle + delayed ACK (~40 ms each).
    conn.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.login(USER, PASSWORD)
    return conn


@pytest.fixture
def smtp() -> Iterator[RecordingSmtp]:
    with RecordingSmtp() as server:
        yield server


def _send(smtp: RecordingSmtp, data: bytes, to: tuple[str, ...] = ("csm@acme.com",)) -> None:
    with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as conn:
        conn.sendmail("success@acme.com", list(to), data)


# --- EmbeddedImap ---------------------------------------------------------------------------


def test_imap_url_percent_encodes_credentials(imap: EmbeddedImap) -> None:
    assert imap.host == "127.0.0.1"
    assert imap.url == f"imap://success%40acme.com:pa%3Ass%2Fw%40rd@127.0.0.1:{imap.port}/INBOX"


def test_imap_login_checks_password(imap: EmbeddedImap) -> None:
    conn = IMAPClient(imap.host, port=imap.port, ssl=False, timeout=10)
    with pytest.raises(LoginError):
        conn.login(USER, "wrong")
    with pytest.raises(LoginError):
        conn.login("someone@acme.com", PASSWORD)
    conn.login(USER, PASSWORD)
    conn.logout()


def test_imap_inbox_starts_empty_with_stable_uidvalidity(imap: EmbeddedImap) -> None:
    first, second = _connect(imap), _connect(imap)
    try:
        a = first.select_folder("INBOX")
        b = second.select_folder("INBOX")
        assert a[b"EXISTS"] == 0
        assert a[b"UIDVALIDITY"] == b[b"UIDVALIDITY"]
        assert first.list_folders() == [((b"\\HasNoChildren",), b"/", "INBOX")]
    finally:
        first.logout()
        second.logout()


def test_imap_append_gives_increasing_uids_and_exact_bytes(
    imap: EmbeddedImap, client: IMAPClient
) -> None:
    raws = [_raw("first"), _raw("second"), _raw("third")]
    for raw in raws:
        imap.append(raw)

    assert client.select_folder("INBOX")[b"EXISTS"] == 3
    uids = client.search("ALL")
    assert uids == sorted(uids)
    assert len(set(uids)) == 3
    fetched = client.fetch(uids, ["RFC822", "BODY.PEEK[]"])
    assert [fetched[uid][b"RFC822"] for uid in uids] == raws
    assert [fetched[uid][b"BODY[]"] for uid in uids] == raws


def test_imap_capabilities(client: IMAPClient) -> None:
    caps = set(client.capabilities())
    assert {b"IDLE", b"MOVE", b"UIDPLUS"} <= caps


def test_imap_idle_is_woken_by_append_from_another_connection(
    imap: EmbeddedImap, client: IMAPClient
) -> None:
    client.select_folder("INBOX")
    for expected in (1, 2, 3):
        client.idle()
        try:
            imap.append(_raw(f"wake up {expected}"))
            responses = client.idle_check(timeout=5)
        finally:
            client.idle_done()
        assert (expected, b"EXISTS") in responses


def test_imap_create_copy_and_move_to_quarantine(imap: EmbeddedImap, client: IMAPClient) -> None:
    imap.append(_raw("copy me"))
    imap.append(_raw("move me"))
    client.create_folder("Quarantine")
    client.select_folder("INBOX")
    copied, moved = client.search("ALL")

    client.copy([copied], "Quarantine")
    client.move([moved], "Quarantine")

    assert client.search("ALL") == [copied]
    client.select_folder("Quarantine", readonly=True)
    in_quarantine = client.fetch(client.search("ALL"), ["BODY.PEEK[]"])
    assert sorted(m[b"BODY[]"] for m in in_quarantine.values()) == sorted(
        [_raw("copy me"), _raw("move me")]
    )


def test_imap_append_into_created_folder(imap: EmbeddedImap, client: IMAPClient) -> None:
    client.create_folder("Quarantine")
    imap.append(_raw("straight to quarantine"), folder="Quarantine")
    assert client.select_folder("Quarantine")[b"EXISTS"] == 1
    assert client.select_folder("INBOX")[b"EXISTS"] == 0


def test_imap_keywords_are_kept_and_searchable(imap: EmbeddedImap, client: IMAPClient) -> None:
    imap.append(_raw("routed"))
    imap.append(_raw("not routed"))
    client.select_folder("INBOX")
    routed, pending = client.search("ALL")

    client.add_flags([routed], [b"$Routed"])

    assert b"$Routed" in client.get_flags([routed])[routed]
    assert client.search(["UNKEYWORD", "$Routed"]) == [pending]
    other = _connect(imap)
    try:
        other.select_folder("INBOX", readonly=True)
        assert other.search(["KEYWORD", "$Routed"]) == [routed]
    finally:
        other.logout()


def test_imap_stop_with_connected_clients_is_clean(caplog: pytest.LogCaptureFixture) -> None:
    before = set(threading.enumerate())
    server = EmbeddedImap(USER, PASSWORD)
    server.start()
    idler, selected = _connect(server), _connect(server)
    idler.select_folder("INBOX")
    idler.idle()
    selected.select_folder("INBOX")

    with caplog.at_level(logging.WARNING):
        server.stop()
        server.stop()  # idempotent
        gc.collect()

    assert set(threading.enumerate()) <= before
    assert not [r for r in caplog.records if r.name.startswith(("asyncio", "pymap"))]
    for conn in (idler, selected):
        conn.shutdown()
    with pytest.raises(RuntimeError):
        _ = server.port


# --- RecordingSmtp --------------------------------------------------------------------------


def test_smtp_records_envelope_and_exact_data(smtp: RecordingSmtp) -> None:
    assert smtp.url == f"smtp://127.0.0.1:{smtp.port}"
    raw = _raw("forwarded")

    _send(smtp, raw, to=("alice@acme.com", "bob@acme.com"))

    (got,) = smtp.wait_for(1)
    assert got == Received("success@acme.com", ["alice@acme.com", "bob@acme.com"], raw)
    assert got.message["Subject"] == "forwarded"
    assert "Grüße" in got.message.get_content()
    assert smtp.messages == [got]


@pytest.mark.parametrize(
    ("code", "text"), [(451, "4.3.0 try again later"), (550, "5.7.1 rejected")]
)
def test_smtp_fail_next_rejects_data_then_accepts(
    smtp: RecordingSmtp, code: int, text: str
) -> None:
    smtp.fail_next(code, text)

    with pytest.raises(smtplib.SMTPDataError) as failed:
        _send(smtp, _raw("refused"))
    assert failed.value.smtp_code == code
    assert failed.value.smtp_error == text.encode()
    assert smtp.messages == []

    _send(smtp, _raw("accepted"))
    assert [m.message["Subject"] for m in smtp.wait_for(1)] == ["accepted"]


def test_smtp_fail_next_count(smtp: RecordingSmtp) -> None:
    smtp.fail_next(451, "4.3.0 try again later", count=2)
    for _ in range(2):
        with pytest.raises(smtplib.SMTPDataError):
            _send(smtp, _raw("refused"))
    _send(smtp, _raw("accepted"))
    assert len(smtp.wait_for(1)) == 1


def test_smtp_fail_next_rejects_non_error_codes(smtp: RecordingSmtp) -> None:
    with pytest.raises(ValueError):
        smtp.fail_next(250, "OK")


def test_smtp_wait_for_blocks_until_messages_arrive(smtp: RecordingSmtp) -> None:
    senders = [threading.Thread(target=_send, args=(smtp, _raw(f"message {i}"))) for i in range(5)]
    for sender in senders:
        sender.start()
    got = smtp.wait_for(5, timeout=10)
    for sender in senders:
        sender.join()
    assert sorted(m.message["Subject"] for m in got) == [f"message {i}" for i in range(5)]


def test_smtp_wait_for_timeout_and_clear(smtp: RecordingSmtp) -> None:
    _send(smtp, _raw("only one"))
    smtp.fail_next(451, "4.3.0 try again later")

    with pytest.raises(TimeoutError, match=r"expected 2 SMTP message.*got 1"):
        smtp.wait_for(2, timeout=0.05)

    smtp.clear()
    assert smtp.messages == []
    _send(smtp, _raw("after clear"))  # the queued failure was cleared too
    assert len(smtp.wait_for(1)) == 1


def test_smtp_stop_with_connected_client_is_clean(caplog: pytest.LogCaptureFixture) -> None:
    before = set(threading.enumerate())
    server = RecordingSmtp()
    server.start()
    conn = smtplib.SMTP(server.host, server.port, timeout=10)
    conn.ehlo()

    with caplog.at_level(logging.WARNING):
        server.stop()
        server.stop()  # idempotent
        gc.collect()

    assert set(threading.enumerate()) <= before
    assert not [r for r in caplog.records if r.name.startswith(("asyncio", "mail.log"))]
    conn.close()


def test_smtp_hold_keeps_data_waiting_then_fails_it_unrecorded(smtp: RecordingSmtp) -> None:
    smtp.hold()
    outcome: list[BaseException | None] = []

    def send() -> None:
        try:
            with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as client:
                client.sendmail("a@acme.com", ["b@acme.com"], b"Subject: held\r\n\r\nx\r\n")
            outcome.append(None)
        except smtplib.SMTPException as exc:
            outcome.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    smtp.wait_until_held(timeout=5)
    assert outcome == [] and smtp.messages == []  # the client is still waiting
    smtp.release()
    sender.join(timeout=10)
    assert isinstance(outcome[0], smtplib.SMTPDataError) and outcome[0].smtp_code == 451
    assert smtp.messages == []
    with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as client:
        client.sendmail("a@acme.com", ["b@acme.com"], b"Subject: next\r\n\r\nx\r\n")
    assert [str(r.message["Subject"]) for r in smtp.wait_for(1)] == ["next"]
