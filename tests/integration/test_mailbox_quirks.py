"""The big providers' mailbox quirks, played by a proxy in front of the real Dovecot.

A push that never comes, a connection dead without a word, throttling, a message whose
fetch kills the connection every time, and how many connections a router holds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
from test_processes import start, stop

from csm_router.app import router as router_module
from csm_router.app.router import Router
from csm_router.config import load_settings
from csm_router.core.message import parse
from csm_router.demo.relay import RecordingSmtp
from csm_router.errors import Backoff
from csm_router.mail import mailbox as imap
from csm_router.mail.mailbox import QUARANTINED_FLAG, Mailbox
from csm_router.runtime import Runtime
from csm_router.state.store import key
from support.imapproxy import ImapProxy
from support.product import Product, customer_mail
from support.servers import DovecotServer, wait_until
from support.servers import Mailbox as AliasMailbox

pytestmark = pytest.mark.integration


@pytest.fixture
def proxy(dovecot: DovecotServer) -> Iterator[ImapProxy]:
    with ImapProxy(dovecot.host, dovecot.imap_port) as proxy:
        yield proxy


@pytest.fixture
def rt(mailbox: AliasMailbox, smtp: RecordingSmtp, redis_url: str, proxy: ImapProxy,
       monkeypatch: pytest.MonkeyPatch) -> Runtime:
    # Only IDLE (or its checks) finds new mail within these tests: a poll is 5 min away.
    settings = load_settings(
        imap_url=proxy.imap_url(mailbox.user, mailbox.password), smtp_url=smtp.url,
        alias=f"Acme CS <{mailbox.user}>", pool="alice@acme.com, bob@acme.com", away="",
        max_open_per_csm=0, poll_seconds=300,
    )
    # Reconnects a tenth of a second apart, not a second doubling: the test's time.
    monkeypatch.setattr(router_module, "Backoff", lambda: Backoff(first=0.1, cap=0.4))
    return Runtime.from_settings(settings, redis.Redis.from_url(redis_url))


@contextmanager
def routing(rt: Runtime) -> Iterator[Router]:
    """A router running in this process (so its intervals can be lowered) for the block."""
    router = Router(rt, Mailbox(rt.settings.required_imap(), timeout=10))
    thread = threading.Thread(target=router.run, daemon=True)
    thread.start()
    try:
        yield router
    finally:
        router.stop.set()
        thread.join(20)
    assert not thread.is_alive()


def deliver(mailbox: AliasMailbox, subject: str) -> bytes:
    _, raw = customer_mail(f"Jane <jane-{subject.lower()}@globex.com>", subject, to=mailbox.user)
    mailbox.deliver(raw)
    return raw


def record(rt: Runtime, raw: bytes) -> dict[str, str]:
    """What Redis holds of a message (found by its Message-ID), once it is routed."""
    wanted = parse(raw).message_id
    found = (rt.store.message(k.decode().removeprefix(key("msg", "")))
             for k in rt.redis.scan_iter(key("msg", "*")))
    return next((r for r in found if r.get("message_id") == wanted), {})


def in_idle(proxy: ImapProxy, connection: int = 1) -> bool:
    return any(c.verb == "IDLE" and c.conn >= connection for c in proxy.commands)


def test_a_silent_idle_still_routes_new_mail_at_the_next_idle(
    rt: Runtime, mailbox: AliasMailbox, proxy: ImapProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(imap, "MAX_IDLE_SECONDS", 2)
    monkeypatch.setattr(imap, "IDLE_CHECK_SECONDS", 60)
    proxy.swallow_pushes = True  # as Exchange Online in a long IDLE: not a word of new mail
    with routing(rt):
        proxy.wait_for(lambda: in_idle(proxy), "the router in IDLE")
        raw = deliver(mailbox, "One")
        delivered = time.monotonic()
        proxy.wait_for(lambda: proxy.swallowed > 0, "the push of the new mail swallowed")
        wait_until(lambda: record(rt, raw), "the message routed", timeout=10)
        took = time.monotonic() - delivered
    assert record(rt, raw)["state"] == "decided"
    assert took < 2 + 1.5  # at most one longest IDLE, and a search
    assert proxy.sent("DONE") and proxy.connections == 1  # found after DONE, on the same


def test_a_connection_that_stops_answering_is_noticed_and_replaced(
    rt: Runtime, mailbox: AliasMailbox, proxy: ImapProxy, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(imap, "IDLE_CHECK_SECONDS", 1)
    monkeypatch.setattr(imap, "CHECK_TIMEOUT_SECONDS", 1)
    with routing(rt):
        proxy.wait_for(lambda: in_idle(proxy), "the router in IDLE")
        proxy.stall()
        stalled = time.monotonic()
        proxy.wait_for(lambda: proxy.connections == 2, "a new connection", timeout=10)
        took = time.monotonic() - stalled
        proxy.wait_for(lambda: in_idle(proxy, connection=2), "the router in IDLE again")
        raw = deliver(mailbox, "After")
        wait_until(lambda: record(rt, raw), "the message routed", timeout=10)
        assert proxy.open == 1  # the dead connection was let go
    assert took < 1 + 1 + 1.5  # one check interval, one check timeout, a reconnect
    assert proxy.most_open <= 2
    assert "IMAP IDLE" in caplog.text


@pytest.mark.parametrize("command", ["LOGIN ", "SELECT ", "BODY.PEEK[]"])
def test_a_throttled_server_is_given_the_time_it_asks_for(
    rt: Runtime, mailbox: AliasMailbox, proxy: ImapProxy, command: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    raw = deliver(mailbox, "One")
    proxy.throttle_once(command, 1500)
    with routing(rt):
        wait_until(lambda: record(rt, raw), "the message routed", timeout=15)
    (throttled,) = [c for c in proxy.commands if command in c.line.upper()][:1]
    retried = next(c for c in proxy.commands if c.conn > throttled.conn)
    assert retried.at - throttled.at >= 1.5
    assert "throttled: the server asks us to wait 1.5s" in caplog.text
    assert "RefusedError" not in caplog.text
    assert list(rt.redis.scan_iter("csm:fetchtries:*")) == []  # no message's fault
    assert proxy.most_open == 1  # the throttled connection was closed before the next


def test_a_message_whose_fetch_cuts_the_connection_is_quarantined_and_mail_flows_on(
    rt: Runtime, mailbox: AliasMailbox, proxy: ImapProxy
) -> None:
    poison = deliver(mailbox, "Poison")
    after = deliver(mailbox, "After")
    client = mailbox.imap_client()
    client.select_folder("INBOX", readonly=True)
    (uid,) = client.search(["SUBJECT", "Poison"])
    proxy.cut_on_body(uid)
    with routing(rt):
        wait_until(lambda: record(rt, after), "the next message routed", timeout=20)
    # Once in a batch with the next message, then three times alone.
    assert proxy.cuts == 4
    assert record(rt, after)["state"] == "decided" and not record(rt, poison)
    validity = client.folder_status("INBOX", ["UIDVALIDITY"])[b"UIDVALIDITY"]
    kept = rt.store.message(f"uid-{validity}-{uid}")
    assert kept["state"] == "quarantined" and kept["rule"] == "failed-fetch"
    assert kept["why"].startswith("fetching it failed 3 times: IMAP fetch of UID")
    assert QUARANTINED_FLAG in client.get_flags([uid])[uid]
    client.select_folder("Quarantine", readonly=True)
    assert len(client.search(["SUBJECT", "Poison"])) == 1
    assert list(rt.redis.scan_iter("csm:fetchtries:*")) == []
    # Never a fetch that sets \Seen, never more than the size and the body.
    fetches = [c.line.upper() for c in proxy.sent("UID FETCH")]
    assert fetches and all(("BODY.PEEK[]" in f) != ("RFC822.SIZE" in f) for f in fetches)
    assert not any("BODY[" in f or "RFC822)" in f or "RFC822 " in f for f in fetches)


def test_a_router_process_never_holds_more_than_two_connections(
    product: Product, proxy: ImapProxy, dovecot: DovecotServer
) -> None:
    product.env["ROUTER_IMAP_URL"] = proxy.imap_url(product.alias, product.mailbox.password)
    # Unset, the start reads the latest mail on a connection of its own to say who signs.
    del product.env["ROUTER_TRUSTED_AUTHSERV_ID"]
    product.write("Jane <jane@globex.com>", "Before")
    # The hint reads it beside the router's first connect: one of the two fails half-way.
    proxy.throttle_once("SELECT ", 200)
    router = start(product, "run", log="router.log")
    try:
        proxy.wait_for(lambda: in_idle(proxy), "the router in IDLE")
        for _ in range(3):
            kicked = proxy.connections
            dovecot.kick(product.alias)  # as a server restart would
            proxy.wait_for(lambda n=kicked + 1: in_idle(proxy, connection=n),
                           "the router in IDLE again")
        proxy.wait_for(lambda: proxy.open == 1, "the hint's connection closed")
    finally:
        code = stop(router)
    assert code == 0
    # The hint's, the router's (twice, if the throttled SELECT was its), and one after
    # each of the three kicks; never more than the hint's and the router's at once.
    assert proxy.connections in (5, 6)
    assert proxy.most_open <= 2
    proxy.wait_for(lambda: proxy.open == 0, "every connection closed at the end")
