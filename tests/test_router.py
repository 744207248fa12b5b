"""The router loop in-process: embedded IMAP and SMTP, in-memory Redis, RQ's own worker."""

from __future__ import annotations

import imaplib
import re
import threading
from collections.abc import Iterator

import fakeredis
import pytest
import redis
from imapclient import IMAPClient

from csm_router.app.router import Router
from csm_router.app.worker import run_worker
from csm_router.config import load_settings
from csm_router.core import classify as classify_module
from csm_router.core.auth import verify_sender
from csm_router.core.decide import decide
from csm_router.core.message import Inbound, parse
from csm_router.demo.imap import EmbeddedImap
from csm_router.demo.relay import RecordingSmtp
from csm_router.demo.stage import compose
from csm_router.errors import TransientError, server_fault
from csm_router.mail.mailbox import QUARANTINED_FLAG, Mailbox
from csm_router.runtime import Runtime, record_decision
from csm_router.sends import jobs
from csm_router.state.store import key, message_key

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


# What real Redis answers when cjson refuses a script's argument (a lone surrogate).
CJSON_REFUSES = ("user_script:5: Expected value but found invalid unicode escape code at "
                 "character 212 script: 163110ea68b44867197b2bbff8d1c8372e59927a, on "
                 "@user_script:5.")


def connected(rt: Runtime) -> Router:
    """A router as `run` has it once connected, to drive one pass at a time."""
    router = Router(rt, Mailbox(rt.settings.required_imap()))
    router.mailbox.connect()
    router._connected = True
    router._ensure_sequence()
    return router


def quarantined(imap: EmbeddedImap) -> list[str]:
    """The Message-IDs in the Quarantine folder, read over IMAP."""
    with IMAPClient(imap.host, port=imap.port, ssl=False, timeout=10) as client:
        client.login(ALIAS, "pw")
        client.select_folder("Quarantine", readonly=True)
        found = client.fetch(client.search(), ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
        return [parse(b"From: a@b.c\r\n" + data[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"]).message_id
                for data in found.values()]


def quarantine_records(rt: Runtime) -> list[dict[str, str]]:
    found = [rt.store.message(k.decode().removeprefix(key("msg", "")))
             for k in rt.redis.scan_iter(key("msg", "*"))]
    return [r for r in found if r.get("state") == "quarantined"]


def hostile_and_next(imap: EmbeddedImap) -> tuple[bytes, bytes]:
    _, hostile = compose("Eve <eve@initech.com>", "Hostile", "Hi\n")
    _, healthy = compose("Jane <jane@globex.com>", "Next customer", "Hi\n")
    imap.append(hostile)
    imap.append(healthy)
    return hostile, healthy


def refuse(rt: Runtime, monkeypatch: pytest.MonkeyPatch, raw: bytes,
           error: Exception | type[BaseException]) -> None:
    """Make recording `raw` fail with `error`, as a script refusing its data would."""
    real = rt.store.record
    bad = parse(raw).message_id

    def record(msgkey: str, msg: Inbound, *args: object, **kw: object) -> object:
        if msg.message_id == bad:
            raise error
        return real(msgkey, msg, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(rt.store, "record", record)


def test_a_script_refusing_a_messages_data_quarantines_it_at_the_third_try_across_restarts(
    rt: Runtime, servers: tuple[EmbeddedImap, RecordingSmtp], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    imap, smtp = servers
    hostile, _ = hostile_and_next(imap)
    refuse(rt, monkeypatch, hostile, redis.ResponseError(CJSON_REFUSES))
    hostile_id = parse(hostile).message_id
    with pytest.raises(TransientError, match="try 1 of 3"):
        connected(rt).poll_once()
    restarted = connected(rt)  # the count is in Redis: a restart does not start it over
    with pytest.raises(TransientError, match="try 2 of 3"):
        restarted.poll_once()
    assert re.search(rf"UID \d+ {re.escape(hostile_id)}: Redis refused its data", caplog.text)
    assert restarted.poll_once() == 2  # the third try quarantines it; routing goes on

    assert quarantined(imap) == [hostile_id]
    record = rt.store.message(message_key(parse(hostile), hostile))
    assert record["state"] == "quarantined" and record["rule"] == "failed-routing"
    assert "failed 3 times: Redis refused its data (user_script:5: Expected value" in record["why"]
    run_worker(rt, burst=True)
    assert [str(r.message["Subject"]) for r in smtp.messages] == ["[CS-1001] Next customer"]



def test_only_failing_messages_keep_a_tries_counter(
    rt: Runtime, servers: tuple[EmbeddedImap, RecordingSmtp], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Counters are for messages routing fails on: a routed one leaves none behind, so
    Redis does not hold a key for every message of the day."""
    imap, _ = servers
    hostile, _ = hostile_and_next(imap)
    refuse(rt, monkeypatch, hostile, redis.ResponseError(CJSON_REFUSES))
    router = connected(rt)
    with pytest.raises(TransientError):
        router.poll_once()
    (counter,) = rt.redis.scan_iter("csm:tries:*")  # the failing message's, and only it
    assert b"Redis refused its data" in rt.redis.hget(counter, "why")
    monkeypatch.undo()  # its next try succeeds
    assert router.poll_once() == 2
    assert list(rt.redis.scan_iter("csm:tries:*")) == []


def test_a_message_the_router_dies_on_is_quarantined_after_three_deaths(
    rt: Runtime, servers: tuple[EmbeddedImap, RecordingSmtp], monkeypatch: pytest.MonkeyPatch,
) -> None:
    imap, smtp = servers
    hostile, _ = hostile_and_next(imap)
    refuse(rt, monkeypatch, hostile, SystemExit)  # nothing is caught: the process is gone
    for _ in range(3):
        with pytest.raises(SystemExit):
            connected(rt).poll_once()
    assert connected(rt).poll_once() == 2
    # Not parsed again (parsing may be what killed it): kept by its bytes, named by its id.
    (record,) = quarantine_records(rt)
    assert record["state"] == "quarantined"
    assert record["message_id"] == parse(hostile).message_id
    assert "routing it failed 3 times: the router stopped while routing it" in record["why"]
    assert quarantined(imap) == [parse(hostile).message_id]
    run_worker(rt, burst=True)
    assert [str(r.message["Subject"]) for r in smtp.messages] == ["[CS-1001] Next customer"]


@pytest.mark.parametrize("fault", [
    redis.ConnectionError("Connection refused"),
    redis.TimeoutError("Timeout reading from socket"),
    redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'"),
    redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
    redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
    redis.ResponseError("BUSY Redis is busy running a script."),
    redis.ResponseError("MISCONF Redis is configured to save RDB snapshots"),
])
def test_a_servers_fault_is_waited_out_and_costs_the_message_no_try(
    rt: Runtime, servers: tuple[EmbeddedImap, RecordingSmtp], monkeypatch: pytest.MonkeyPatch,
    fault: redis.RedisError,
) -> None:
    imap, smtp = servers
    hostile, _ = hostile_and_next(imap)
    refuse(rt, monkeypatch, hostile, fault)
    router = connected(rt)
    for _ in range(5):
        with pytest.raises(redis.RedisError):
            router.poll_once()
    assert server_fault(fault)
    monkeypatch.undo()  # the server is well again
    assert router.poll_once() == 2
    run_worker(rt, burst=True)
    assert sorted(str(r.message["Subject"]) for r in smtp.messages) == [
        "[CS-1001] Hostile", "[CS-1002] Next customer"]


@pytest.mark.parametrize(("error", "fault"), [
    (redis.ResponseError(CJSON_REFUSES), False),
    (redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
     False),
    (redis.ResponseError("ERR Error running script, attempt to index a nil value"), False),
    (redis.exceptions.NoScriptError("No matching script. Please use EVAL."), True),
    (redis.ResponseError("NOREPLICAS Not enough good replicas to write."), True),
    (redis.ResponseError("MASTERDOWN Link with MASTER is down"), True),
])
def test_script_data_errors_are_told_from_server_faults(
    error: redis.RedisError, fault: bool
) -> None:
    assert server_fault(error) is fault


def test_a_message_whose_quarantine_record_is_refused_too_is_kept_by_its_bytes(
    rt: Runtime, servers: tuple[EmbeddedImap, RecordingSmtp], monkeypatch: pytest.MonkeyPatch,
) -> None:
    imap, smtp = servers
    hostile, _ = hostile_and_next(imap)
    refuse(rt, monkeypatch, hostile, redis.ResponseError(CJSON_REFUSES))
    real = rt.store.record_quarantine
    bad = parse(hostile).message_id

    def record_quarantine(msgkey: str, message_id: str, *args: object) -> object:
        if message_id == bad:  # what made the record fail refuses this one as well
            raise redis.ResponseError(CJSON_REFUSES)
        return real(msgkey, message_id, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(rt.store, "record_quarantine", record_quarantine)
    router = connected(rt)
    for _ in range(2):
        with pytest.raises(TransientError):
            router.poll_once()
    assert router.poll_once() == 2
    (record,) = quarantine_records(rt)
    assert record["message_id"] == ""  # refused once, so not written again
    assert quarantined(imap) == [bad]
    run_worker(rt, burst=True)
    assert [str(r.message["Subject"]) for r in smtp.messages] == ["[CS-1001] Next customer"]


def test_a_forward_that_cannot_be_written_quarantines_its_message_once_and_stays_put(
    servers: tuple[EmbeddedImap, RecordingSmtp], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    imap, smtp = servers
    settings = load_settings(
        imap_url=imap.url, smtp_url=smtp.url, alias=f"Acme CS <{ALIAS}>",
        pool="alice@acme.com, bob@acme.com", away="", max_open_per_csm=0,
        overflow_address="cs-lead@acme.com",
    )
    rt = Runtime.from_settings(settings, fakeredis.FakeRedis())
    jobs.configure(rt)
    try:
        hostile, _ = hostile_and_next(imap)
        real = jobs.render_forward
        bad = parse(hostile).message_id

        def render_forward(msg: Inbound, **kw: object) -> object:
            if msg.message_id == bad:  # what the email package said of U+2028 in a name
                raise ValueError("Header values may not contain linefeed or carriage return")
            return real(msg, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(jobs, "render_forward", render_forward)
        run(rt)
        run(rt)  # nothing more is owed: it does not tour the pool
    finally:
        jobs.configure(None)
    assert sorted((r.rcpt_tos[0], str(r.message["Subject"])) for r in smtp.messages) == [
        ("bob@acme.com", "[CS-1002] Next customer"),
        ("cs-lead@acme.com", "Undeliverable: [CS-1001] Hostile"),
    ]
    assert rt.store.thread(1001)["owner"] == "alice@acme.com"
    (event,) = [e for e in rt.store.events(1001) if e["event"] == "quarantined"]
    assert "cannot be sent to alice@acme.com: the forward cannot be written (ValueError" in (
        event["why"])
    (letter,) = rt.outbox.dead_letters()
    assert letter.kind == "deliver"
    assert not [r for r in caplog.records if r.exc_info]  # its own fault: no traceback


class StopAfterOneWait(threading.Event):
    """A stop event that records the first wait asked of it, and stops the run there."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout or 0)
        self.set()
        return True


def test_a_throttled_server_gets_the_wait_it_asks_for(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    stop = StopAfterOneWait()
    router = Router(rt, Mailbox(rt.settings.required_imap()), stop=stop)

    def throttled() -> None:
        raise TransientError("IMAP SELECT: Request is throttled", retry_after=12.3)

    monkeypatch.setattr(router.mailbox, "connect", throttled)
    router.run()
    assert stop.waits == [12.3]  # not the backoff's first second
    assert "the server asks us to wait 12.3s" in caplog.text


def test_a_message_whose_fetch_keeps_failing_is_quarantined_and_the_next_routed(
    rt: Runtime, servers: tuple[EmbeddedImap, RecordingSmtp], monkeypatch: pytest.MonkeyPatch,
) -> None:
    imap, _ = servers
    hostile, healthy = hostile_and_next(imap)
    router = connected(rt)
    (bad, good) = router.mailbox.new_uids(0)
    real_fetch = router.mailbox._fetch

    def fetch(uids: list[int], what: bytes) -> dict[int, dict[bytes, object]]:
        if what == b"BODY.PEEK[]" and bad in uids:
            raise TransientError("IMAP fetch: command: UID => socket error: EOF")
        return real_fetch(uids, what)  # type: ignore[return-value]

    monkeypatch.setattr(router.mailbox, "_fetch", fetch)
    real_copy = router.mailbox.client.copy
    copies: list[object] = []

    def copy(uids: list[int], folder: str) -> object:
        copies.append(uids)
        if bad in uids:
            raise imaplib.IMAP4.abort("socket error: EOF")
        return real_copy(uids, folder)

    monkeypatch.setattr(router.mailbox.client, "copy", copy)
    # The batch of both fails; then the culprit alone, three times; then its copy.
    for said in (f"UID {bad},{good}:", f"UID {bad}:", f"UID {bad}:", f"UID {bad}:",
                 f"quarantine of UID {bad}"):
        with pytest.raises(TransientError, match=said):
            router.poll_once()
    assert router.poll_once() == 2  # only flagged now; the next message goes on
    assert copies == [[bad]] and quarantined(imap) == []
    kept = rt.store.message(f"uid-{router.mailbox.uidvalidity}-{bad}")
    assert kept["state"] == "quarantined" and kept["rule"] == "failed-fetch"
    assert kept["why"].startswith("fetching it failed 3 times: IMAP fetch of UID")
    assert QUARANTINED_FLAG in router.mailbox.client.get_flags([bad])[bad]
    healthy_record = rt.store.message(message_key(parse(healthy), healthy))
    assert healthy_record["state"] == "decided"
    assert not rt.store.message(message_key(parse(hostile), hostile))
    assert list(rt.redis.scan_iter("csm:fetchtries:*")) == []
    assert router.poll_once() == 0  # never fetched again


def test_each_message_is_classified_once_and_its_forward_says_it_looks_technical(
    servers: tuple[EmbeddedImap, RecordingSmtp], monkeypatch: pytest.MonkeyPatch
) -> None:
    imap, smtp = servers
    settings = load_settings(
        imap_url=imap.url, smtp_url=smtp.url, alias=f"Acme CS <{ALIAS}>",
        pool="alice@acme.com, bob@acme.com", away="", max_open_per_csm=0,
        support_address="support@acme.com")
    runtime = Runtime.from_settings(settings, fakeredis.FakeRedis())
    jobs.configure(runtime)
    read: list[str] = []
    real = classify_module._classify
    monkeypatch.setattr(classify_module, "_classify",
                        lambda msg, rules: read.append(msg.subject) or real(msg, rules))
    _, first = compose("Jane <jane@globex.com>", "Export", "How do I export a report?\n")
    imap.append(first)
    run(runtime)
    # Jane, in her thread, reports an error: it stays with her CSM, with a hint.
    _, error = compose("Jane <jane@globex.com>", "Re: [CS-1001] Export",
                       "Since this morning the API returns HTTP 500 errors and our "
                       "integration fails with a timeout. Stack trace attached.\n")
    imap.append(error)
    run(runtime)
    jobs.configure(None)
    assert read == ["Export", "Re: [CS-1001] Export"]  # once each, by the router alone
    first_forward, second = smtp.messages
    assert "Looks technical" not in str(first_forward.message)
    assert "Looks technical (" in str(second.message) and "#support" in str(second.message)
