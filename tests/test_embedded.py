"""The embedded IMAP server and recording SMTP relay, and `csm-router demo` told on them."""

from __future__ import annotations

import gc
import io
import logging
import os
import re
import smtplib
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError
from rich.console import Console

from csm_router.demo.imap import EmbeddedImap
from csm_router.demo.relay import Received, RecordingSmtp
from csm_router.demo.run import tell
from csm_router.demo.stage import Demo
from csm_router.lead import poolstatus, report
from csm_router.lead.statuspage import duration
from csm_router.state import pool

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


# --- the demo's story, told at 80 columns ---------------------------------------------------


@dataclass(frozen=True)
class Told:
    demo: Demo
    text: str
    folder: Path


@pytest.fixture(scope="module")
def told(tmp_path_factory: pytest.TempPathFactory) -> Told:
    buffer = io.StringIO()
    folder = tmp_path_factory.mktemp("digest")
    out = Console(file=buffer, width=80, highlight=False, color_system=None)
    demo = tell(out, preview_folder=folder)
    return Told(demo, buffer.getvalue(), folder)


def _section(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end, text.index(start))]


def _rows(block: str) -> list[list[str]]:
    """A rich table's rows as cell texts, its wrapped lines joined back together."""
    rows: list[list[str]] = []
    for line in block.splitlines():
        if not line.startswith("│"):
            continue
        cells = [c.strip() for c in line.strip("│").split("│")]
        if rows and not cells[0]:  # the first column of a wrapped row is blank
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells, strict=True)]
        else:
            rows.append(cells)
    return rows


def test_demo_fits_80_columns_with_the_whole_intro_box(told: Told) -> None:
    lines = told.text.splitlines()
    assert max(len(line) for line in lines) <= 80
    box = lines[: next(i for i, line in enumerate(lines) if line.startswith("╰")) + 1]
    assert box[0].startswith("╭") and all(line.endswith(("│", "╮", "╯")) for line in box)
    assert "nothing leaves this machine." in " ".join(box)


def test_demo_signature_step_prints_the_block_with_its_tag(told: Told) -> None:
    tag = pool.signature_tag(told.demo.store, "carol@acme.com")
    block = _section(told.text, "1. The pool", "2. Nine customers")
    inside = [line.strip("│ ") for line in block.splitlines() if line.startswith("│")]
    assert inside == ["--", "Carol Diaz", "Customer Success · Acme Customer Success",
                      f"success@acme.com · {tag}"]


def test_demo_support_rows_say_why_it_went_to_support(told: Told) -> None:
    rows = _rows(_section(told.text, "2. Nine customers", "3. Alice answers"))
    (support,) = [r for r in rows if r[0] == "support@acme.com"]
    assert support[2].startswith("technical (score")
    assert "'returns a 500'" in support[2]
    (note,) = [r for r in rows if r[0] == "lea@cyberdyne.ai"]
    assert note[2] == "tells the customer that Support has it"
    assert all(r[2] not in ("", "-") for r in rows)


def test_demo_shows_ignored_and_quarantined_messages_with_reasons(told: Told) -> None:
    rows = _rows(_section(told.text, "6. newco.io", "7. Alice is back"))
    by_outcome = {r[0]: r for r in rows}
    assert by_outcome["(ignored)"][1:] == ["Out of office",
                                           "automatic: Auto-Submitted: auto-replied"]
    assert by_outcome["(quarantined)"][2].endswith(": no parsable From address")


def test_demo_onboarding_owner_away_is_the_reason_in_the_table_and_the_forward(
    told: Told,
) -> None:
    rows = _rows(_section(told.text, "6. newco.io", "7. Alice is back"))
    (nia,) = [r for r in rows if "Kick-off call" in r[1]]
    assert re.fullmatch(r"onboarding owner alice@acme\.com is away \(until \w{3} \d+ \w{3} "
                        r"\d\d:\d\d UTC\); next in the round-robin", nia[2])
    forward = next(r for r in told.demo.smtp.messages  # later, step 8 escalates it
                   if str(r.message["Subject"]).endswith("] Kick-off call"))
    body = forward.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert f"Why you: {nia[2]}" in body.splitlines()


def test_demo_says_when_someone_is_marked_away_and_back(told: Told) -> None:
    text = " ".join(told.text.split())
    away = text.index("alice@acme.com is marked away until")
    back = text.index("alice@acme.com is marked back (`csm-router back alice@acme.com`)")
    assert text.index("4. Alice is away") < away < text.index("5. Eli") < back
    assert back < text.index("8. An hour passes")


def test_demo_status_and_report_figures_agree_with_the_commands(told: Told) -> None:
    store, now = told.demo.store, told.demo.now()
    status = _rows(_section(told.text, "9. The pool now", "10. The lead's figures"))
    expected = [[r.name, "no", str(r.open), str(r.overdue_now), str(r.taken_today),
                 duration(r.median_first_response_seconds)] for r in poolstatus.status(store, now)]
    assert [r for r in status if r[0]] == expected

    day, since = poolstatus.today(store, now), poolstatus.today(store, time.time())
    figures = report.build(store, since, day + timedelta(days=1))
    period = [r for r in _rows(_section(told.text, "10. The lead's figures", "CSMs per account"))
              if r[0]]
    assert [r[:5] for r in period] == [
        [c.name, str(c.taken), str(c.replies), duration(c.median_first_response_seconds),
         str(c.went_overdue)] for c in figures.csms]
    if since == day:  # one day: what status counts today is what the report counts
        assert [r[4] for r in status if r[0]] == [r[1] for r in period]
    assert figures.threads.went_overdue > 0  # the sweep escalated some
    said = " ".join(told.text.split())
    assert "`overdue now` counts threads past their first-response target and not answered" in said
    assert f"targets missed in the period ({figures.threads.went_overdue} today)" in said


def test_demo_prints_the_status_page_as_text(told: Told) -> None:
    page = _section(told.text, "11. The lead's status page", "12. The weekly digest")
    assert "Customer Success pool" in page
    opens = {r.name: r.open for r in poolstatus.status(told.demo.store, told.demo.now())}
    assert f"Alice Smith alice@acme.com | {opens['Alice Smith']} |" in page
    assert re.search(r"http://127\.0\.0\.1:\d+/", page)


def test_demo_names_the_digest_preview_files_and_they_exist(told: Told) -> None:
    block = _section(told.text, "12. The weekly digest", "Next: run it")
    named = [Path(line.strip()) for line in block.splitlines() if line.strip().startswith("/")]
    assert [p.suffix for p in named] == [".eml", ".html"]
    assert all(p.parent == told.folder and p.stat().st_size > 0 for p in named)
    assert "cp deploy/.env.example" in told.text and "csm-router check" in told.text


def test_demo_keep_running_serves_the_status_page_until_enter(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    proc = subprocess.Popen([sys.executable, "-m", "csm_router.cli", "demo", "--keep-running"],
                            cwd=tmp_path, env=env | {"PYTHONUNBUFFERED": "1"},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    watchdog = threading.Timer(120, proc.kill)  # a hang fails the test instead of the run
    watchdog.start()
    try:
        assert proc.stdout is not None and proc.stdin is not None
        said = ""
        while "Press Enter" not in said and (line := proc.stdout.readline()):
            said += line
        found = re.search(r"The status page is at (http://127\.0\.0\.1:\d+/)", said)
        assert found, said[-2000:]
        with urllib.request.urlopen(found[1], timeout=10) as page:
            assert "Customer Success pool" in page.read().decode()
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    finally:
        watchdog.cancel()
        proc.kill()
    with pytest.raises(OSError):
        urllib.request.urlopen(found[1], timeout=5)
