"""What /metrics and /healthz say, from counts the real scripts keep in an in-memory Redis."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator

import fakeredis
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from starlette.testclient import TestClient

from csm_router.app.web import create_app, health_url, serve
from csm_router.config import ConfigError, load_settings, parse_bind
from csm_router.core.decide import decide
from csm_router.core.message import parse
from csm_router.demo.relay import RecordingSmtp
from csm_router.runtime import Runtime
from csm_router.sends import jobs
from csm_router.state.outbox import Heartbeat
from csm_router.state.processes import (
    ProcessBeat,
    bucket_of,
    check_routers,
    forget_stale,
    processes,
)
from csm_router.state.store import key, message_key
from support.runtime import worker_runtime

ALICE, BOB = "alice@acme.com", "bob@acme.com"
RECEIVED = "Received: from mx.globex.com by mail.acme.com with LMTP; {date}\r\n"
# The Host a scraper on this machine sends: web answers to no other name.
LOCAL = "http://127.0.0.1"

# The Host a browser on this machine sends: web answers to no other name.
LOCAL = "http://127.0.0.1"


def mail(n: int, *, headers: str = "", sender: str = "") -> bytes:
    sender = sender or f"Customer {n} <c{n}@customer{n}.com>"
    return (f"{headers}From: {sender}\r\nTo: success@acme.com\r\nSubject: Question {n}\r\n"
            f"Message-ID: <q{n}@example.com>\r\n\r\nHow do I export?\r\n").encode()


@pytest.fixture
def rt(smtp: RecordingSmtp) -> Iterator[Runtime]:
    with worker_runtime(smtp.url, f"{ALICE}, {BOB}") as runtime:
        yield runtime


def route(rt: Runtime, raw: bytes, now: float | None = None) -> tuple[str, ...]:
    msg = parse(raw)
    now = now if now is not None else time.time()
    decision = decide(msg, rt.store.snapshot(msg, now))
    return rt.store.record(message_key(msg, raw), msg, decision, now, raw=raw).owed


def scrape(rt: Runtime) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of /metrics, by sample name and then by its labels."""
    answer = TestClient(create_app(rt.settings, rt.redis), base_url=LOCAL).get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(answer.text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def test_each_message_counts_once_by_outcome_rule_and_csm(rt: Runtime) -> None:
    for n in range(3):
        route(rt, mail(n))
    route(rt, mail(0))  # fetched again by a second router: already recorded, not counted
    route(rt, mail(9, headers="Auto-Submitted: auto-replied\r\n"))
    rt.store.record_quarantine("k-bad", "", "no parsable From address", time.time(),
                               "no-sender")
    got = scrape(rt)
    assert got["csm_router_messages_seen_total"] == {(): 5.0}
    assert got["csm_router_messages_routed_total"] == {
        (("action", "forward"), ("rule", "round-robin")): 3.0}
    assert got["csm_router_messages_ignored_total"] == {(("rule", "automatic"),): 1.0}
    assert got["csm_router_messages_quarantined_total"] == {(("rule", "no-sender"),): 1.0}
    assert got["csm_router_decisions_total"] == {(("csm", ALICE),): 2.0, (("csm", BOB),): 1.0}
    assert got["csm_router_open_threads"] == {(("csm", ALICE),): 2.0, (("csm", BOB),): 1.0}
    assert got["csm_router_outbox_entries"][(("state", "pending"),)] == 3.0


def test_deliveries_count_attempts_failures_and_the_wait_since_receipt(
    rt: Runtime, smtp: RecordingSmtp
) -> None:
    received = time.time() - 3.5  # the mail server took it 3.5 s ago (to the second)
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(received))
    (first,) = route(rt, mail(1, headers=RECEIVED.format(date=date)))
    (second,) = route(rt, mail(2))  # no Received header: no wait to measure
    smtp.fail_next(451, "4.3.0 try again")
    assert jobs.perform_one(first).startswith("will retry")
    rt.redis.zadd(key("outbox"), {first: 0})  # its retry is due now
    jobs.perform_one(first)
    jobs.perform_one(second)
    got = scrape(rt)
    assert got["csm_router_delivery_attempts_total"] == {(("kind", "deliver"),): 3.0}
    assert got["csm_router_delivery_failures_total"] == {(("kind", "deliver"),): 1.0}
    assert got["csm_router_deliveries_done_total"] == {(("kind", "deliver"),): 2.0}
    count = got["csm_router_forward_seconds_count"][()]
    assert count == 1.0
    waited = got["csm_router_forward_seconds_sum"][()]
    assert 3.0 <= waited < 30.0  # the retry's 5 s backoff was not waited out here
    buckets = got["csm_router_forward_seconds_bucket"]
    assert buckets[(("le", "2.0"),)] == 0.0
    assert buckets[(("le", "+Inf"),)] == 1.0


def test_histogram_buckets_are_upper_bounds() -> None:
    assert bucket_of(0.2).endswith("\t1")
    assert bucket_of(1.0).endswith("\t1")
    assert bucket_of(1.01).endswith("\t2")
    assert bucket_of(7200).endswith("\t+Inf")


def test_gauges_read_held_overdue_and_dead_letters_from_the_state(rt: Runtime) -> None:
    for n in range(2):
        route(rt, mail(n), now=time.time() - 7200)  # two hours old: past a 60-minute target
    rt.redis.zadd(key("held"), {"1009": 1.0})
    rt.redis.zadd(key("dead"), {"deliver-x": 1.0})
    got = scrape(rt)
    assert got["csm_router_overdue_threads"] == {(("csm", ALICE),): 1.0, (("csm", BOB),): 1.0}
    assert got["csm_router_held_threads"] == {(): 1.0}
    assert got["csm_router_dead_letters"] == {(): 1.0}
    assert got["csm_router_queue_length"][(("queue", "deliver"),)] == 0.0


def test_overdue_and_taken_gauges_say_which_figure_they_are(rt: Runtime) -> None:
    """Overdue now (status), not the report's went overdue; taken today is the status's
    and the report's one count, for the lead's day."""
    route(rt, mail(0))
    answer = TestClient(create_app(rt.settings, rt.redis), base_url=LOCAL).get("/metrics")
    helps = dict(re.findall(r"^# HELP (\S+) (.*)$", answer.text, re.M))
    assert "overdue now" in helps["csm_router_overdue_threads"]
    assert "went overdue" in helps["csm_router_overdue_threads"]  # says it is not that
    assert "taken today" in helps["csm_router_threads_taken_today"]
    taken = scrape(rt)["csm_router_threads_taken_today"]
    assert taken == {(("csm", ALICE),): 1.0, (("csm", BOB),): 0.0}


def test_processes_report_their_heartbeat_and_imap_state(rt: Runtime) -> None:
    router = ProcessBeat(rt.redis, "router", "success@acme.com/INBOX", poll=30)
    router.imap = "connected"
    an_hour_ago = time.time() - 3000
    router.beat(an_hour_ago)
    Heartbeat(rt.store, "w1").beat()
    got = scrape(rt)
    beats = got["csm_router_process_heartbeat_timestamp_seconds"]
    assert sorted(dict(labels)["role"] for labels in beats) == ["router", "worker"]
    assert an_hour_ago in beats.values()
    # Silent for 50 minutes: not connected as far as anyone can tell.
    assert list(got["csm_router_imap_connected"].values()) == [0.0]


def test_healthz_needs_every_router_beating_within_its_poll_interval(rt: Runtime) -> None:
    client = TestClient(create_app(rt.settings, rt.redis), base_url=LOCAL)
    answer = client.get("/healthz")
    assert answer.status_code == 503
    assert "no router has reported itself" in answer.text
    router = ProcessBeat(rt.redis, "router", "success@acme.com/INBOX", poll=30)
    router.imap = "connected"
    router.beat()
    answer = client.get("/healthz")
    assert answer.status_code == 200, answer.text
    # The IMAP login, the host and the pid are for someone who logged in (see below).
    assert f"router {router_id(router)} beat" in answer.text
    router.beat(time.time() - 40)  # 40 s silent: over 30 s and the grace
    answer = client.get("/healthz")
    assert answer.status_code == 503
    assert "silent for 40s, over its poll interval of 30s" in answer.text
    router.imap = "disconnected"
    router.beat()
    assert "has no IMAP connection" in client.get("/healthz").text
    router.imap = "refused"  # an OAuth login refused after it worked: waited out
    router.beat()
    answer = client.get("/healthz")
    assert answer.status_code == 503 and "is refused by IMAP" in answer.text
    router.forget()  # stopped on purpose: not late, and no router left
    assert "no router has reported itself" in client.get("/healthz").text


def router_id(beat: ProcessBeat) -> str:
    return hashlib.sha256(beat.id.encode()).hexdigest()[:8]


def test_metrics_and_healthz_name_logins_hosts_and_pids_only_to_the_lead(rt: Runtime) -> None:
    settings = rt.settings.model_copy(update={"web_password": SecretStr("s3cret")})
    client = TestClient(create_app(settings, rt.redis), base_url=LOCAL)
    router = ProcessBeat(rt.redis, "router", "success@acme.com@imap.acme.com:993/INBOX",
                         poll=30)
    router.imap = "connected"
    router.beat()
    Heartbeat(rt.store, "w1").beat()
    secret = ("success@acme.com", "imap.acme.com", socket.gethostname(), f"{os.getpid()}")
    for path in ("/healthz", "/metrics"):
        public = client.get(path)
        assert public.status_code == 200, public.text
        assert router_id(router) in public.text
        assert not [s for s in secret if s in public.text], public.text
        lead = client.get(path, auth=("admin", "s3cret"))
        assert lead.status_code == 200
        assert all(s in lead.text for s in secret), lead.text
        assert client.get(path, auth=("admin", "wrong")).status_code == 401


def test_healthz_and_metrics_answer_503_when_redis_is_down(rt: Runtime) -> None:
    server = fakeredis.FakeServer()
    server.connected = False
    client = TestClient(create_app(rt.settings, fakeredis.FakeRedis(server=server)),
                        base_url=LOCAL)
    answer = client.get("/healthz")
    assert answer.status_code == 503
    assert "Redis unreachable" in answer.text
    assert client.get("/metrics").status_code == 503


def test_processes_gone_for_good_are_forgotten(rt: Runtime) -> None:
    old = ProcessBeat(rt.redis, "router", "gone")
    old.beat(time.time() - 2 * 3600)
    assert processes(rt.redis) == []
    problems, routers = check_routers(rt.redis, detailed=True)
    assert problems == ["no router has reported itself: is `csm-router run` running?"]
    assert routers == []


def test_received_at_is_the_topmost_received_header() -> None:
    raw = (RECEIVED.format(date="Fri, 27 Nov 2026 07:35:27 +0100")
           + RECEIVED.format(date="Fri, 27 Nov 2026 07:35:20 +0100")).encode() + mail(1)
    assert parse(raw).received_at == 1795761327.0
    assert parse(mail(1)).received_at is None
    assert parse(RECEIVED.format(date="yesterday").encode() + mail(1)).received_at is None


@pytest.mark.parametrize(("value", "bind"), [
    ("127.0.0.1:8025", ("127.0.0.1", 8025)),
    ("0.0.0.0:9000", ("0.0.0.0", 9000)),
    ("[::1]:8025", ("::1", 8025)),
])
def test_web_address_parses(value: str, bind: tuple[str, int]) -> None:
    assert parse_bind(value) == bind


@pytest.mark.parametrize("value", ["8025", "localhost", "host:0", "host:http", ":8025"])
def test_a_wrong_web_address_says_what_it_should_look_like(value: str) -> None:
    with pytest.raises(ValueError, match="is not host:port"):
        parse_bind(value)


def test_health_asks_a_wildcard_bind_on_loopback() -> None:
    settings = load_settings(alias="success@acme.com", pool=ALICE, web_address="0.0.0.0:9000")
    assert health_url(settings) == "http://127.0.0.1:9000/healthz"


def test_a_process_killed_on_this_host_is_forgotten_at_the_next_start(rt: Runtime) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    killed = ProcessBeat(rt.redis, "router", "success@acme.com/INBOX", poll=30)
    killed.pid, killed.id = dead.pid, f"router:success@acme.com/INBOX@here:{dead.pid}"
    killed.beat(time.time() - 60)
    elsewhere = ProcessBeat(rt.redis, "router", "success@acme.com/INBOX", poll=30)
    elsewhere.id, elsewhere.host = "router:other-host:4242", "other-host"
    elsewhere.beat(time.time() - 60)
    mine = ProcessBeat(rt.redis, "router", "success@acme.com/INBOX", poll=30)
    mine.beat()
    forget_stale(rt.redis)
    assert sorted(p.id for p in processes(rt.redis)) == sorted([elsewhere.id, mine.id])


def test_a_port_in_use_is_one_line_naming_the_setting(rt: Runtime) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = load_settings(alias="success@acme.com", pool=ALICE,
                                 web_address=f"127.0.0.1:{port}")
        with pytest.raises(ConfigError, match=rf"ROUTER_WEB_ADDRESS: cannot listen on "
                           rf"127.0.0.1:{port}: Address already in use"):
            serve(settings, rt.redis)
