"""`csm-router web` on real servers: /metrics after real mail, /healthz as things fail."""

from __future__ import annotations

import base64
import contextlib
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from email.message import Message
from pathlib import Path

import pytest
import redis as redis_lib
from prometheus_client.parser import text_string_to_metric_families
from test_processes import kill, start, stop

from support.product import Product
from support.servers import RedisServer, free_ports

pytestmark = pytest.mark.integration

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


@pytest.fixture
def web(product: Product) -> Iterator[str]:
    """A running `csm-router web`; answers its base URL."""
    (port,) = free_ports(1)
    product.env["ROUTER_WEB_ADDRESS"] = f"127.0.0.1:{port}"
    proc = start(product, "web", log="web.log")
    base = f"http://127.0.0.1:{port}"
    until(lambda: get(base + "/healthz")[0] in (200, 503), "web to listen",
          (product.workdir / "web.log").read_text)
    yield base
    assert stop(proc) == 0


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def until(ready: Callable[[], bool], what: str, log: Callable[[], str] = str,
          timeout: float = 30) -> None:
    """Ask again until `ready()`: the web process's answers are the event awaited."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{log()}")
        time.sleep(0.2)


def scrape(base: str) -> Samples:
    status, body = get(base + "/metrics")
    assert status == 200, body
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def by(samples: dict[tuple[tuple[str, str], ...], float], label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for labels, value in samples.items() if value}


def test_metrics_count_what_real_mail_did(product: Product, web: str) -> None:
    for n in range(5):
        product.write(f"C{n} <c{n}@c{n}.com>", f"Question {n}")
    product.write("Jane <jane@c0.com>", "Out of office", headers={"Auto-Submitted": "auto-replied"})
    product.deliver(b"To: success@acme.com\r\nSubject: no sender\r\n"
                    b"Message-ID: <broken@example.com>\r\n\r\nhello\r\n")
    sent = product.route()
    forwards = Counter(r.rcpt_tos[0] for r in sent)
    assert sum(forwards.values()) == 5

    got = scrape(web)
    assert got["csm_router_messages_seen_total"][()] == 7
    assert by(got["csm_router_messages_routed_total"], "action") == {"forward": 5}
    assert by(got["csm_router_messages_ignored_total"], "rule") == {"automatic": 1}
    assert by(got["csm_router_messages_quarantined_total"], "rule") == {"no-sender": 1}
    # The CSMs the routers chose are the CSMs the relay saw mail for.
    assert by(got["csm_router_decisions_total"], "csm") == forwards
    assert by(got["csm_router_open_threads"], "csm") == forwards
    assert by(got["csm_router_delivery_attempts_total"], "kind") == {"deliver": 5}
    assert by(got["csm_router_deliveries_done_total"], "kind") == {"deliver": 5}
    assert "csm_router_delivery_failures_total" not in got
    # Dovecot's LMTP stamped each receipt: every first forward is in the histogram.
    assert got["csm_router_forward_seconds_count"][()] == 5
    assert got["csm_router_forward_seconds_bucket"][(("le", "+Inf"),)] == 5
    assert 0 <= got["csm_router_forward_seconds_sum"][()] < 5 * 60
    assert got["csm_router_outbox_entries"][(("state", "pending"),)] == 0
    assert got["csm_router_dead_letters"][()] == 0
    assert got["csm_router_held_threads"][()] == 0


@contextlib.contextmanager
def own_redis(product: Product, tmp_path: Path) -> Iterator[tuple[RedisServer, str]]:
    """The product on a Redis of its own, persistent as production runs it (a Redis that
    keeps nothing fails /healthz itself), and where `web` will listen: (Redis, /healthz)."""
    with RedisServer(tmp_path / "own-redis", persistent=True) as own:
        product.env["ROUTER_REDIS_URL"] = own.url
        (port,) = free_ports(1)
        product.env["ROUTER_WEB_ADDRESS"] = f"127.0.0.1:{port}"
        yield own, f"http://127.0.0.1:{port}/healthz"


def test_healthz_follows_the_routers_and_redis(
    product: Product, tmp_path: Path
) -> None:
    with own_redis(product, tmp_path) as (own, health):
        web = start(product, "web", log="web.log")
        router = start(product, "run", log="router.log")
        worker = start(product, "worker", log="worker.log")
        try:
            until(lambda: get(health)[0] == 200, "a healthy deployment",
                  lambda: get(health)[1])
            said = get(health)[1]
            assert "- router " in said
            # Without the status page's credentials: no IMAP login, host name or pid.
            assert product.alias not in said and " pid " not in said
            product.write("C1 <c1@c1.com>", "Still routing")
            product.smtp.wait_for(1, timeout=30)
            # The image's HEALTHCHECK: the command exits 0 while healthy.
            assert product.cli("health", "--url", health).returncode == 0

            kill(router)  # SIGKILL: no chance to say goodbye
            until(lambda: "silent for" in get(health)[1], "the router to be late")
            assert get(health)[0] == 503
            failed = product.cli("health", check=False)
            assert failed.returncode == 1
            assert "silent for" in failed.stderr

            router = start(product, "run", log="router-2.log")  # as systemd would restart it
            until(lambda: get(health)[0] == 200, "the restarted router to be counted",
                  lambda: get(health)[1])

            own.stop()
            status, said = get(health)
            assert status == 503
            assert "Redis unreachable" in said
            assert get(health.replace("/healthz", "/metrics"))[0] == 503
            # Each process still stops when asked, with Redis gone.
            assert [stop(proc) for proc in (router, worker, web)] == [0, 0, 0]
        finally:
            for proc in (router, worker, web):
                if proc.poll() is None:
                    stop(proc)


def test_healthz_fails_while_redis_keeps_nothing_on_disk(product: Product, web: str) -> None:
    # The shared test Redis runs with appendonly no and no save, as a careless deploy would.
    router = start(product, "run", log="router.log")
    try:
        router_log = (product.workdir / "router.log").read_text
        # Warned at start, before anything is routed.
        until(lambda: "keeps no data on disk" in router_log(), "the router's warning",
              router_log)
        status, said = get(web + "/healthz")
        assert status == 503
        assert "keeps no data on disk" in said and "appendonly yes" in said
    finally:
        assert stop(router) == 0


def ask(url: str, headers: dict[str, str]) -> tuple[int, Message, str]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.headers, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


def test_web_refuses_other_hosts_and_throttles_password_guessing(product: Product) -> None:
    (port,) = free_ports(1)
    product.env |= {"ROUTER_WEB_ADDRESS": f"127.0.0.1:{port}", "ROUTER_WEB_USER": "lead",
                    "ROUTER_WEB_PASSWORD": "right-horse"}
    proc = start(product, "web", log="web.log")
    base = f"http://127.0.0.1:{port}"
    try:
        until(lambda: get(base + "/healthz")[0] in (200, 503), "web to listen")
        # DNS rebinding: a page on evil.example whose name now points here.
        for path in ("/", "/healthz", "/metrics"):
            assert ask(base + path, {"Host": f"evil.example:{port}"})[0] == 421
        wrong = {"Authorization": "Basic " + base64.b64encode(b"lead:guess").decode()}
        right = {"Authorization": "Basic " + base64.b64encode(b"lead:right-horse").decode()}
        assert ask(base + "/", right)[0] == 200
        assert [ask(base + "/", wrong)[0] for _ in range(5)] == [401] * 5
        status, headers, _ = ask(base + "/", right)  # throttled: not even checked
        assert status == 429
        assert int(headers.get("Retry-After", "0")) > 0
        log = (product.workdir / "web.log").read_text()
        assert log.count("failed login from 127.0.0.1") == 5
        assert "guess" not in log and "right-horse" not in log
    finally:
        assert stop(proc) == 0


def owed_since(redis: redis_lib.Redis, seconds: float) -> int:
    """Make every owed send look owed `seconds` ago, as if that long had passed with no
    worker; answers how many there are. The grace is a minute: waiting it out for real
    would only slow the suite."""
    entries = redis.zrange("csm:outbox", 0, -1)
    then = time.time() - seconds
    for entry in entries:
        redis.zadd("csm:outbox", {entry: then})
        redis.hset(f"csm:outbox:e:{entry.decode()}", "created", then)
    return len(entries)


def test_healthz_fails_while_mail_is_owed_with_no_worker_and_recovers_when_one_sends(
    product: Product, tmp_path: Path
) -> None:
    with own_redis(product, tmp_path) as (_, health):
        web = start(product, "web", log="web.log")
        router = start(product, "run", log="router.log")
        worker = None
        try:
            until(lambda: get(health)[0] == 200, "a healthy deployment without a worker",
                  lambda: get(health)[1])
            product.write("Jane Doe <jane@globex.com>", "Renewal terms")
            redis = product.redis()
            until(lambda: redis.zcard("csm:outbox") == 1, "the forward to be owed")
            # Within the grace a send is not late: a worker may be restarting.
            assert get(health)[0] == 200
            assert owed_since(redis, 130) == 1

            until(lambda: get(health)[0] == 503, "the owed mail to fail /healthz",
                  lambda: get(health)[1])
            said = get(health)[1]
            assert said.splitlines() == [
                "unhealthy",
                "- no worker: 1 send owed for 2 min, none taken: is `csm-router worker` "
                "running?"], said
            failed = product.cli("health", "--url", health, check=False)
            assert failed.returncode == 1 and "no worker: 1 send owed" in failed.stderr

            worker = start(product, "worker", log="worker.log")
            (sent,) = product.smtp.wait_for(1, timeout=30)
            assert "Renewal terms" in str(sent.message["Subject"])
            until(lambda: get(health)[0] == 200, "healthy once the worker sent it",
                  lambda: get(health)[1])
            assert "no worker" not in get(health)[1]
        finally:
            for proc in (router, worker, web):
                if proc is not None and proc.poll() is None:
                    assert stop(proc) == 0
