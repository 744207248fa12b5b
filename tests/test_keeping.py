"""Raw mail kept in Redis stays bounded: per message (keeping.py) and per thread (record)."""

from __future__ import annotations

import base64

from csm_router.core.decide import decide
from csm_router.core.keeping import kept_raw
from csm_router.core.message import Inbound, parse
from csm_router.runtime import record_decision
from csm_router.state import pool
from csm_router.state.store import Outcome, Store, key, message_key
from test_store import ALICE, BOB, CAROL, NOW, mail, make_store

ALIAS = "success@acme.com"
LIMIT = 64 * 1024


def with_attachments(*sizes: int, text: str = "Please see the attached files.") -> bytes:
    parts = [f"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"]
    for n, size in enumerate(sizes):
        data = base64.encodebytes(bytes([n % 256]) * size).decode()
        parts.append(f"--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: "
                     f"base64\r\nContent-Disposition: attachment; filename=\"f{n}.pdf\"\r\n\r\n"
                     f"{data}\r\n")
    return ("From: Jane <jane@globex.com>\r\nTo: success@acme.com\r\nSubject: Files\r\n"
            "Message-ID: <files@globex.com>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
            + "".join(parts) + "--b--\r\n").encode()


def test_a_message_within_the_limit_is_kept_whole() -> None:
    raw = with_attachments(10_000)
    assert kept_raw(raw, ALIAS, LIMIT) is raw


def test_beyond_the_limit_the_largest_attachments_give_way_to_a_note() -> None:
    raw = with_attachments(20_000, 100_000, 5_000)
    kept = kept_raw(raw, ALIAS, LIMIT)
    assert len(kept) <= LIMIT < len(raw)
    msg = parse(kept)
    assert msg.message_id == "<files@globex.com>" and "attached files" in msg.text
    names = [a.filename for a in msg.attachments]
    assert names == ["f0.pdf", "f1.pdf (in the alias mailbox).txt", "f2.pdf"]
    note = msg.attachments[1].data.decode()
    assert "f1.pdf" in note and "alias mailbox (success@acme.com)" in note


def test_text_alone_over_the_limit_keeps_the_header_and_says_where_the_rest_is() -> None:
    raw = ("From: Jane <jane@globex.com>\r\nSubject: Long\r\nMessage-ID: <long@globex.com>\r\n"
           "Content-Type: text/plain;\r\n charset=utf-8\r\n\r\n" + "x" * 200_000).encode()
    msg = parse(kept_raw(raw, ALIAS, LIMIT))
    assert (msg.subject, msg.message_id) == ("Long", "<long@globex.com>")
    assert "too large for the router to keep" in msg.text and "x" * 100 not in msg.text


def test_unparsable_bytes_over_the_limit_are_bounded_not_a_crash() -> None:
    kept = kept_raw(b"\xff\x00" * LIMIT, ALIAS, LIMIT)
    assert len(kept) < 1024


def route_keeping(store: Store, msg: Inbound, now: float = NOW) -> Outcome:
    decision = decide(msg, store.snapshot(msg, now))
    return record_decision(store, message_key(msg, msg.raw), msg, decision, now, raw=msg.raw)


def test_delivered_raws_past_the_threads_history_window_are_dropped() -> None:
    store = make_store()
    first = route_keeping(store, mail())
    ref = first.ref or 0
    for _ in range(9):
        route_keeping(store, mail(subject=f"Re: [CS-{ref}] Question"))
    msgkeys = store.thread_messages(ref)
    store.redis.hset(key("msg", msgkeys[2]), "state", "delivered")
    store.redis.hset(key("msg", msgkeys[3]), "state", "delivered")
    route_keeping(store, mail(subject=f"Re: [CS-{ref}] Question"))  # 11 messages now
    kept = [store.load_raw(m) is not None for m in store.thread_messages(ref)]
    # Delivered and out of the newest six: gone. Still owed (never delivered): kept.
    assert kept == [True, True, False, False] + [True] * 7


def test_a_held_messages_raw_is_kept_until_it_is_released() -> None:
    store = make_store()
    for csm in (ALICE, BOB, CAROL):
        pool.set_away(store, csm)
    held = route_keeping(store, mail())
    (msgkey,) = store.thread_messages(held.ref or 0)
    assert held.state == "held" and store.redis.ttl(key("raw", msgkey)) == -1
    pool.set_back(store, BOB)
    store.release_held(NOW)
    assert 0 < store.redis.ttl(key("raw", msgkey)) <= 14 * 86400
