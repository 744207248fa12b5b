"""The IMAP adapter: sizes before bodies, batching, and when STARTTLS is required."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from csm_router.config import parse_server_url
from csm_router.demo.imap import EmbeddedImap
from csm_router.demo.stage import compose
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
