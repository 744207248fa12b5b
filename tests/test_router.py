"""The router loop in-process: embedded IMAP and SMTP, in-memory Redis, RQ's own worker."""

from __future__ import annotations

from collections.abc import Iterator

import fakeredis
import pytest
import redis

from csm_router import jobs
from csm_router.auth import verify_sender
from csm_router.config import load_settings
from csm_router.decide import decide
from csm_router.demo import compose
from csm_router.dispatch import Runtime, record_decision
from csm_router.embedded import EmbeddedImap, RecordingSmtp
from csm_router.mailbox import Mailbox
from csm_router.message import parse
from csm_router.router import Router
from csm_router.store import key, message_key
from csm_router.worker import run_worker

ALIAS = "success@acme.com"


@pytest.fixture
def servers() -> Iterator[tuple[EmbeddedImap, RecordingSmtp]]:
    with EmbeddedImap(ALIAS, "pw") as imap, RecordingSmtp() as smtp:
        yield imap, smtp


@pytest.fixture
def rt(servers: tuple[EmbeddedImap, RecordingSmtp]) -> Iterator[Runtime]:
    imap, smtp = servers
    settings = load_settings(
        imap_url=imap.url, smtp_url=smtp.url, alias=f"Acme CS <{ALIAS}>",
        pool="alice@acme.com, bob@acme.com", away="", max_open_per_csm=0,
    )
    runtime = Runtime.from_settings(settings, fakeredis.FakeRedis())
    jobs.configure(runtime)
    yield runtime
    jobs.configure(None)


def run(rt: Runtime) -> Router:
    router = Router(rt, Mailbox(rt.settings.required_imap()))
    router.run(exit_when_idle=True)
    run_worker(rt, burst=True)
    return router


def test_work_recorded_by_a_killed_router_is_finished_by_the_next(
    rt: Runtime, servers: tuple[EmbeddedImap, RecordingSmtp]
) -> None:
    imap, smtp = servers
    _, raw = compose("Jane <jane@globex.com>", "Help", "Hello\n")
    imap.append(raw)
    # What a router leaves behind when it dies right after recording: a decision (and the
    # forward it owes) in Redis, nothing enqueued, the checkpoint not moved.
    msg = parse(raw)
    msgkey = message_key(msg, raw)
    rt.store.ensure_sequence()
    snap = rt.store.snapshot(msg, 0.0, verdict=verify_sender(msg, None))
    record_decision(rt.store, msgkey, msg, decide(msg, snap), 0.0, raw=raw)
    assert smtp.messages == []

    run(rt)
    (forward,) = smtp.messages
    assert forward.rcpt_tos == ["alice@acme.com"]
    assert rt.store.message(msgkey)["state"] == "delivered"
    assert rt.redis.get(key("seq")) == b"1001"  # no second thread was made


def test_a_recreated_folder_is_rescanned_without_routing_twice(
    rt: Runtime, servers: tuple[EmbeddedImap, RecordingSmtp]
) -> None:
    imap, smtp = servers
    for n in range(3):
        imap.append(compose(f"C{n} <c{n}@c{n}.com>", f"Q{n}", "Hi\n")[1])
    router = run(rt)
    assert len(smtp.messages) == 3
    name = router.mailbox.name
    validity, last = rt.store.checkpoint(name)
    rt.redis.hset(key("mailbox", name), "uidvalidity", validity + 1)  # as after a re-create
    imap.append(compose("New <new@new.com>", "Q3", "Hi\n")[1])
    run(rt)
    assert len(smtp.messages) == 4  # only the new one
    assert rt.store.checkpoint(name) == (validity, last + 1)


class Killed(BaseException):
    """The process dies here (a BaseException, as SystemExit is: nothing catches it)."""


def test_two_routers_one_killed_right_after_recording_send_each_forward_once(
    rt: Runtime, servers: tuple[EmbeddedImap, RecordingSmtp], monkeypatch: pytest.MonkeyPatch
) -> None:
    imap, smtp = servers
    for n in range(3):
        imap.append(compose(f"C{n} <c{n}@c{n}.com>", f"Q{n}", "Hi\n")[1])
    doomed = Router(rt, Mailbox(rt.settings.required_imap()))

    def die(*args: object, **kwargs: object) -> int:
        raise Killed  # recorded, owed, and gone before anything was offered

    monkeypatch.setattr(rt.outbox, "offer", die)
    with pytest.raises(Killed):
        doomed.run(exit_when_idle=True)
    monkeypatch.undo()
    assert rt.outbox.pending() == 3  # decided and owed, nothing offered
    # The other router finds them recorded (duplicates for it), offers nothing new.
    survivor = Router(rt, Mailbox(rt.settings.required_imap()))
    survivor.run(exit_when_idle=True)
    run_worker(rt, burst=True)
    assert sorted(str(r.message["Subject"]) for r in smtp.messages) == [
        "[CS-1001] Q0", "[CS-1002] Q1", "[CS-1003] Q2"]


def test_redis_failing_while_quarantining_copies_the_mail_once_and_quarantines_nothing_else(
    rt: Runtime, servers: tuple[EmbeddedImap, RecordingSmtp], monkeypatch: pytest.MonkeyPatch
) -> None:
    imap, _ = servers
    imap.append(b"From: nobody\r\nSubject: broken\r\n\r\nno sender, no id\r\n")
    imap.append(compose("Jane <jane@globex.com>", "Healthy", "Hi\n")[1])
    router = Router(rt, Mailbox(rt.settings.required_imap()))
    copies: list[int] = []
    real_quarantine = router.mailbox.quarantine
    monkeypatch.setattr(router.mailbox, "quarantine",
                        lambda uid: (copies.append(uid), real_quarantine(uid)))
    real_record = rt.store.record_quarantine
    calls = iter([True])

    def flaky(*args: object) -> object:
        if next(calls, False):
            raise redis.ConnectionError("Redis went away")
        return real_record(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(rt.store, "record_quarantine", flaky)
    router.mailbox.connect()
    router._connected = True
    rt.store.ensure_sequence()  # as `run` does at connect: no thread is numbered before
    with pytest.raises(redis.ConnectionError):
        router.poll_once()  # a server's error: waited out by `run`, not quarantined
    assert copies == []
    router.poll_once()
    router.poll_once()
    assert len(copies) == 1
    healthy = [m for m in rt.redis.scan_iter(key("msg", "*"))
               if rt.redis.hget(m, "state") == b"decided"]
    assert len(healthy) == 1  # the healthy mail was routed, never quarantined
