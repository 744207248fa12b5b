"""The IMAP adapter: sizes before bodies, batching, and when STARTTLS is required."""

from __future__ import annotations

import imaplib
import threading
from collections.abc import Iterator
from typing import Any, ClassVar
from urllib.parse import quote

import pytest
from imapclient.exceptions import IMAPClientError, LoginError

from csm_router.config import parse_server_url
from csm_router.demo.imap import EmbeddedImap
from csm_router.demo.stage import compose
from csm_router.errors import RefusedError, TransientError
from csm_router.mail import mailbox as mailbox_module
from csm_router.mail.imapfaults import MAX_SUGGESTED_BACKOFF, FetchError, suggested_backoff
from csm_router.mail.mailbox import FETCH_BATCH, FETCH_BATCH_BYTES, Mailbox
from support.servers import fetch_with_limit

MB = 1024 * 1024


class FakeClient:
    """Answers FETCH from a table of messages and records every command it is sent."""

    def __init__(self, messages: dict[int, bytes], sizes: dict[int, int] | None = None) -> None:
        self.messages = messages
        self.sizes = sizes or {uid: len(raw) for uid, raw in messages.items()}
        self.commands: list[tuple[list[int], bytes]] = []

    def fetch(self, uids: list[int], what: list[bytes]) -> dict[int, dict[bytes, Any]]:
        (item,) = what
        self.commands.append((list(uids), item))
        if item == b"RFC822.SIZE":
            return {uid: {b"RFC822.SIZE": self.sizes[uid]} for uid in uids if uid in self.sizes}
        assert item == b"BODY.PEEK[]"
        return {uid: {b"BODY[]": self.messages[uid]} for uid in uids if uid in self.messages}


def mailbox_with(client: FakeClient) -> Mailbox:
    box = Mailbox(parse_server_url("imap://u:p@127.0.0.1/INBOX", ("imap", "imaps")))
    box._client = client  # type: ignore[assignment]
    return box


def test_an_oversized_message_is_never_downloaded_but_keeps_its_place() -> None:
    client = FakeClient({1: b"a" * 10, 2: b"b" * 5000, 3: b"c" * 10})
    got = list(mailbox_with(client).fetch([1, 2, 3], max_bytes=1000))
    assert got == [(1, b"a" * 10), (2, None), (3, b"c" * 10)]
    assert client.commands == [([1, 2, 3], b"RFC822.SIZE"), ([1, 3], b"BODY.PEEK[]")]


def test_a_message_of_exactly_the_limit_is_fetched() -> None:
    client = FakeClient({7: b"x" * 1000})
    assert list(mailbox_with(client).fetch([7], max_bytes=1000)) == [(7, b"x" * 1000)]


def test_bodies_are_batched_by_count() -> None:
    uids = list(range(1, 2 * FETCH_BATCH + 2))
    client = FakeClient({uid: b"m" for uid in uids})
    got = list(mailbox_with(client).fetch(uids, max_bytes=MB))
    assert [uid for uid, _ in got] == uids
    bodies = [batch for batch, item in client.commands if item == b"BODY.PEEK[]"]
    assert [len(batch) for batch in bodies] == [FETCH_BATCH, FETCH_BATCH, 1]
    assert sum(item == b"RFC822.SIZE" for _, item in client.commands) == 1


def test_bodies_are_batched_by_total_size() -> None:
    # Sizes as the server reports them; the bodies themselves can stay small.
    third = FETCH_BATCH_BYTES // 3 + 1
    sizes = {1: third, 2: third, 3: third, 4: 10, 5: FETCH_BATCH_BYTES * 2}
    client = FakeClient({uid: b"m" for uid in sizes}, sizes)
    got = list(mailbox_with(client).fetch(list(sizes), max_bytes=FETCH_BATCH_BYTES * 3))
    assert [uid for uid, _ in got] == [1, 2, 3, 4, 5]
    bodies = [batch for batch, item in client.commands if item == b"BODY.PEEK[]"]
    # Never more than the byte budget in one command, unless one message alone exceeds it.
    assert bodies == [[1, 2], [3, 4], [5]]


def test_a_message_expunged_meanwhile_is_left_out() -> None:
    client = FakeClient({1: b"a", 3: b"c"}, sizes={1: 1, 2: 1, 3: 1})
    assert list(mailbox_with(client).fetch([1, 2, 3, 4], max_bytes=100)) == [
        (1, b"a"), (3, b"c")
    ]


def test_no_body_command_when_every_message_is_oversized() -> None:
    client = FakeClient({1: b"a" * 50, 2: b"b" * 50})
    assert list(mailbox_with(client).fetch([1, 2], max_bytes=10)) == [(1, None), (2, None)]
    assert [item for _, item in client.commands] == [b"RFC822.SIZE"]


@pytest.fixture
def imap() -> Iterator[EmbeddedImap]:
    with EmbeddedImap("success@acme.com", "pw") as server:
        yield server


def test_fetch_against_a_real_imap_server_skips_the_oversized_body(imap: EmbeddedImap) -> None:
    small = compose("Jane <jane@globex.com>", "Small", "Hello\n")[1]
    large = compose("Joe <joe@initech.io>", "Large", "x" * 20_000 + "\n")[1]
    for raw in (small, large, small):
        imap.append(raw)
    uids, got = fetch_with_limit(imap.url, 10_000)
    assert len(uids) == 3
    assert [(uid, raw is None) for uid, raw in got] == list(
        zip(uids, (False, True, False), strict=True)
    )
    assert got[0][1] is not None and got[0][1].replace(b"\r\n", b"\n") == small.replace(
        b"\r\n", b"\n"
    )


# --- throttling, a failed body fetch, All Mail, and the IDLE check ----------------------

THROTTLED = "Request is throttled. Suggested Backoff Time: 12345 milliseconds"


@pytest.mark.parametrize(("said", "seconds"), [
    (f"LOGIN failed. {THROTTLED}", 12.345),
    ("NO Request is throttled. Suggested Backoff Time: 3 seconds", 3.0),
    ("Request is throttled. suggested backoff time:250ms", 0.25),
    ("Request is throttled. Suggested Backoff Time: 1500", 1.5),  # Office 365's unit
    ("Suggested Backoff Time: 99999999 milliseconds", MAX_SUGGESTED_BACKOFF),
    ("NO [UNAVAILABLE] try again later", None),
    ("Fetch failed", None),
])
def test_a_throttling_answer_gives_the_wait_it_suggests(said: str, seconds: float | None) -> None:
    assert suggested_backoff(said) == seconds


class FailingClient(FakeClient):
    """Fails every body fetch that includes `bad` with `error`."""

    def __init__(self, messages: dict[int, bytes], bad: int, error: Exception) -> None:
        super().__init__(messages)
        self.bad, self.error = bad, error

    def fetch(self, uids: list[int], what: list[bytes]) -> dict[int, dict[bytes, Any]]:
        if what == [b"BODY.PEEK[]"] and self.bad in uids:
            self.commands.append((list(uids), what[0]))
            raise self.error
        return super().fetch(uids, what)


def test_a_failed_body_batch_names_its_uids_and_one_by_one_names_the_culprit() -> None:
    client = FailingClient({1: b"a", 2: b"b", 3: b"c"}, bad=2,
                           error=imaplib.IMAP4.abort("socket error: EOF"))
    with pytest.raises(FetchError) as batch:
        list(mailbox_with(client).fetch([1, 2, 3], max_bytes=MB))
    assert batch.value.uids == [1, 2, 3]
    got: list[tuple[int, bytes | None]] = []
    with pytest.raises(FetchError) as single:
        got.extend(mailbox_with(client).fetch([1, 2, 3], max_bytes=MB, batch=1))
    assert single.value.uids == [2] and got == [(1, b"a")]
    skipped = list(mailbox_with(client).fetch([1, 2, 3], max_bytes=MB, skip={2}, batch=1))
    assert skipped == [(1, b"a"), (2, None), (3, b"c")]


def test_a_throttled_fetch_is_nobodys_fault_and_carries_the_wait() -> None:
    client = FailingClient({1: b"a"}, bad=1, error=IMAPClientError(f"fetch failed: {THROTTLED}"))
    with pytest.raises(TransientError) as caught:
        list(mailbox_with(client).fetch([1], max_bytes=MB))
    assert not isinstance(caught.value, FetchError)
    assert caught.value.retry_after == 12.345


class NoSocket:
    """Socket options set on it go nowhere."""

    def setsockopt(self, *args: object) -> None:
        pass

    def settimeout(self, timeout: float | None) -> None:
        pass


class FakeServer:
    """Just enough of IMAPClient for `connect`: a LIST answer, and a login that may fail."""

    listed: ClassVar[list[tuple[tuple[bytes, ...], bytes, str]]] = []
    login_error: ClassVar[Exception | None] = None
    opened: ClassVar[list[FakeServer]] = []

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.logged_out = False
        FakeServer.opened.append(self)

    def socket(self) -> NoSocket:
        return NoSocket()

    def capabilities(self) -> tuple[bytes, ...]:
        return (b"STARTTLS", b"IDLE")

    def starttls(self, context: object) -> None:
        pass

    def login(self, user: str, password: str) -> None:
        if self.login_error is not None:
            raise self.login_error

    def list_folders(self, directory: str = "", pattern: str = "*") -> list[Any]:
        return [entry for entry in self.listed if entry[2] == pattern]

    def select_folder(self, folder: str) -> dict[bytes, Any]:
        return {b"UIDVALIDITY": 7, b"UIDNEXT": 1, b"EXISTS": 0}

    def folder_exists(self, folder: str) -> bool:
        return True

    def logout(self) -> None:
        self.logged_out = True

    def shutdown(self) -> None:
        pass


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> type[FakeServer]:
    monkeypatch.setattr(mailbox_module, "IMAPClient", FakeServer)
    monkeypatch.setattr(FakeServer, "opened", [])
    monkeypatch.setattr(FakeServer, "listed", [])
    monkeypatch.setattr(FakeServer, "login_error", None)
    return FakeServer


def fake_box(folder: str) -> Mailbox:
    return Mailbox(parse_server_url(f"imap://u:p@127.0.0.1/{quote(folder, safe='')}",
                                    ("imap", "imaps")))


def test_gmails_all_mail_is_refused_at_connect(fake_server: type[FakeServer]) -> None:
    fake_server.listed = [((b"\\HasNoChildren", b"\\All"), b"/", "[Gmail]/All Mail"),
                          ((b"\\HasNoChildren",), b"/", "CS")]
    box = fake_box("[Gmail]/All Mail")
    with pytest.raises(RefusedError, match=r"\[Gmail\]/All Mail, which holds all the mail"):
        box.connect()
    assert fake_server.opened[-1].logged_out  # nothing left open
    fine = fake_box("CS")
    fine.connect()
    assert fine.uidvalidity == 7
    fine.close()


def test_a_throttled_login_is_waited_out_not_refused(fake_server: type[FakeServer]) -> None:
    fake_server.login_error = LoginError(f"LOGIN failed. {THROTTLED}")
    with pytest.raises(TransientError) as caught:
        fake_box("INBOX").connect()
    assert not isinstance(caught.value, RefusedError)
    assert caught.value.retry_after == 12.345
    assert fake_server.opened[-1].logged_out


def test_a_wrong_password_is_still_refused(fake_server: type[FakeServer]) -> None:
    fake_server.login_error = LoginError("[AUTHENTICATIONFAILED] Authentication failed.")
    with pytest.raises(RefusedError):
        fake_box("INBOX").connect()


class IdleClient:
    """An IDLE that never pushes, and a NOOP after DONE that reports new mail."""

    def __init__(self, noop: list[Any]) -> None:
        self.noop_says = noop
        self.commands: list[str] = []

    def has_capability(self, name: str) -> bool:
        return name == "IDLE"

    def socket(self) -> NoSocket:
        return NoSocket()

    def idle(self) -> None:
        self.commands.append("IDLE")

    def idle_check(self, timeout: float) -> list[Any]:
        threading.Event().wait(timeout)  # a server saying nothing
        return []

    def idle_done(self) -> tuple[bytes, list[Any]]:
        self.commands.append("DONE")
        return b"Idle completed", []

    def noop(self) -> tuple[bytes, list[Any]]:
        self.commands.append("NOOP")
        return b"NOOP completed", self.noop_says


def test_idle_is_checked_with_noop_and_new_mail_found_there_ends_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mailbox_module, "IDLE_CHECK_SECONDS", 0.1)
    monkeypatch.setattr(mailbox_module, "MAX_IDLE_SECONDS", 0.35)
    quiet, told = IdleClient([]), IdleClient([(3, b"EXISTS")])
    for client in (quiet, told):
        mailbox_with(client).wait(300, threading.Event())  # type: ignore[arg-type]
    # IDLE re-issued after each check until the longest wait is over...
    cycles = len(quiet.commands) // 3
    assert cycles >= 3 and quiet.commands == ["IDLE", "DONE", "NOOP"] * cycles
    # ...unless the NOOP said there is new mail: then the caller searches at once.
    assert told.commands == ["IDLE", "DONE", "NOOP"]


def test_the_production_idle_timings_keep_the_providers_limits() -> None:
    # The quirks tests shorten these to seconds; the values shipped must hold what
    # Exchange Online and a dead connection demand.
    assert mailbox_module.MAX_IDLE_SECONDS <= 10 * 60  # IDLE re-issued within 10 minutes
    # A dead IDLE (DONE unanswered) is noticed within a minute.
    assert mailbox_module.IDLE_CHECK_SECONDS + mailbox_module.CHECK_TIMEOUT_SECONDS < 60
