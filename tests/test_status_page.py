"""The lead's status page of `csm-router web`: Basic auth, what `/` and `/thread/CS-n`
show of decisions the real scripts recorded in an in-memory Redis, and escaping."""

from __future__ import annotations

import base64
import html
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import fakeredis
import pytest
from starlette.testclient import TestClient

from csm_router.app.web import create_app, serve
from csm_router.app.webguard import LoginThrottle
from csm_router.config import ConfigError, Settings, load_settings
from csm_router.core.decide import decide
from csm_router.core.message import parse
from csm_router.core.threads import parse_ref
from csm_router.lead.statuspage import credentials_match, span
from csm_router.mail.outbound import use_templates, when
from csm_router.runtime import Runtime
from csm_router.state import pool
from csm_router.state.store import key, message_key

ALICE, BOB, CAROL = "alice@acme.com", "bob@acme.com", "carol@acme.com"
PASSWORD = "correct horse"
# A Wednesday noon; Carol works Saturdays only, so she is off shift until Saturday 09:00.
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC).timestamp()
SCRIPT = "<script>alert(1)</script>"

# The Host a browser on this machine sends: web answers to no other name.
LOCAL = "http://127.0.0.1"


def settings(**overrides: str) -> Settings:
    values = {
        "alias": "Acme Customer Success <success@acme.com>",
        "pool": f"Alice Smith <{ALICE}>*2, Bob Jones <{BOB}>, {CAROL}",
        "hours": f"{CAROL}=UTC 09-17 Sat",
        "overflow_address": "cs-lead@acme.com",
        "web_password": PASSWORD,
    } | overrides
    return load_settings(**values)


@pytest.fixture
def rt() -> Iterator[Runtime]:
    runtime = Runtime.from_settings(settings(), fakeredis.FakeRedis())
    runtime.store.ensure_sequence()
    yield runtime
    use_templates(None)


@pytest.fixture
def client(rt: Runtime) -> TestClient:
    return TestClient(create_app(rt.settings, rt.redis, clock=lambda: NOW), base_url=LOCAL)


def write(rt: Runtime, n: int, subject: str, at: float, *, sender: str = "",
          headers: str = "") -> None:
    """A customer's mail, decided and recorded by the real rules and scripts at `at`."""
    sender = sender or f"Jane Doe {n} <jane{n}@globex{n}.com>"
    raw = (f"{headers}From: {sender}\r\nTo: success@acme.com\r\nSubject: {subject}\r\n"
           f"Message-ID: <m{n}@example.com>\r\n\r\nHow do I export the report?\r\n").encode()
    msg = parse(raw)
    rt.store.record(message_key(msg, raw), msg, decide(msg, rt.store.snapshot(msg, at)), at,
                    raw=raw)


def page(client: TestClient, path: str = "/") -> str:
    answer = client.get(path, auth=("admin", PASSWORD))
    assert answer.status_code == 200, answer.text
    return answer.text


def visible(markup: str) -> str:
    """The page's text as a reader sees it: tags dropped, entities decoded, spaces joined."""
    markup = markup.partition("<body>")[2]
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", markup)).split())


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


# -- who may look ------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {},
    basic("admin", "wrong"),
    basic("root", PASSWORD),
    basic("admin", PASSWORD + "x"),
    {"Authorization": "Basic not-base64!"},
    {"Authorization": "Bearer " + PASSWORD},
    {"Authorization": "Basic " + base64.b64encode(PASSWORD.encode()).decode()},  # no user
], ids=["none", "wrong-password", "wrong-user", "longer", "garbage", "bearer", "no-colon"])
@pytest.mark.parametrize("path", ["/", "/thread/CS-1001"])
def test_the_pages_refuse_missing_or_wrong_credentials_with_a_basic_challenge(
    client: TestClient, headers: dict[str, str], path: str
) -> None:
    answer = client.get(path, headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == 'Basic realm="csm-router"'
    assert "ROUTER_WEB_PASSWORD" in answer.text
    assert PASSWORD not in answer.text


def test_the_right_user_and_password_open_the_page(rt: Runtime, client: TestClient) -> None:
    answer = client.get("/", headers=basic("admin", PASSWORD))
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert answer.headers["cache-control"] == "no-store"
    assert "script-src" not in answer.headers["content-security-policy"]  # none runs
    other = settings(web_user="lead", web_password="sésame ünïcode")
    lead = TestClient(create_app(other, rt.redis), base_url=LOCAL)
    assert lead.get("/", auth=("lead", "sésame ünïcode")).status_code == 200
    assert lead.get("/", auth=("admin", "sésame ünïcode")).status_code == 401


def test_metrics_and_healthz_need_no_password(client: TestClient) -> None:
    assert client.get("/metrics").status_code == 200
    assert client.get("/healthz").status_code == 503  # no router running: but answered
    assert "www-authenticate" not in client.get("/healthz").headers


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1.evil.example", "", "acme.com:8025"])
@pytest.mark.parametrize("path", ["/", "/metrics", "/healthz"])
def test_a_request_naming_another_host_is_refused(rt: Runtime, host: str, path: str) -> None:
    client = TestClient(create_app(rt.settings, rt.redis), base_url=LOCAL)
    answer = client.get(path, headers={"Host": host}, auth=("admin", PASSWORD))
    assert answer.status_code == 421
    assert "ROUTER_WEB_ADDRESS" in answer.text


@pytest.mark.parametrize("host", ["localhost:8025", "127.0.0.1", "[::1]:8025",
                                  "status.acme.com:8025", "STATUS.acme.com"])
def test_the_configured_address_and_localhost_are_answered(rt: Runtime, host: str) -> None:
    configured = settings(web_address="status.acme.com:8025")
    client = TestClient(create_app(configured, rt.redis), base_url=LOCAL)
    assert client.get("/", headers={"Host": host}, auth=("admin", PASSWORD)).status_code == 200


def test_a_wildcard_address_answers_this_machine_and_ip_addresses_only(rt: Runtime) -> None:
    everywhere = settings(web_address="0.0.0.0:8025")
    client = TestClient(create_app(everywhere, rt.redis), base_url=LOCAL)
    for host in (f"{socket.gethostname()}:8025", "10.0.0.5:8025", "[2001:db8::5]:8025"):
        assert client.get("/healthz", headers={"Host": host}).status_code != 421, host
    for host in ("evil.example:8025", "10.0.0.5.evil.example"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 421, host


def test_failed_logins_are_logged_and_throttled_per_client_and_overall(
    rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    app = create_app(rt.settings, rt.redis, throttle=LoginThrottle(clock=lambda: now[0]))

    def client(address: str) -> TestClient:
        return TestClient(app, base_url=LOCAL, client=(address, 40000))

    eve = client("203.0.113.7")
    for _ in range(5):
        assert eve.get("/", auth=("admin", "guess")).status_code == 401
    # Past five failures a minute, not even the right password is checked.
    throttled = eve.get("/", auth=("admin", PASSWORD))
    assert throttled.status_code == 429
    assert throttled.headers["retry-after"] == "60"
    assert eve.get("/metrics", auth=("admin", "guess")).status_code == 429
    failures = [r.getMessage() for r in caplog.records if "failed login" in r.getMessage()]
    assert len(failures) == 5
    assert all("203.0.113.7" in line for line in failures)
    assert not [r for r in caplog.records if "guess" in r.getMessage()]
    # Someone else is not held up by eve; without credentials /metrics still answers.
    assert client("198.51.100.1").get("/", auth=("admin", PASSWORD)).status_code == 200
    assert eve.get("/metrics").status_code == 200
    now[0] += 61
    assert eve.get("/", auth=("admin", PASSWORD)).status_code == 200
    # Many clients guessing at once pause every login for a while.
    for n in range(30):
        client(f"192.0.2.{n}").get("/", auth=("admin", "guess"))
    assert client("198.51.100.1").get("/", auth=("admin", PASSWORD)).status_code == 429
    now[0] += 61
    assert client("198.51.100.1").get("/", auth=("admin", PASSWORD)).status_code == 200


def test_credentials_are_compared_whole() -> None:
    assert credentials_match(basic("admin", "pw:with:colons")["Authorization"], "admin",
                             "pw:with:colons")
    assert credentials_match("basic " + basic("admin", "pw")["Authorization"][6:], "admin", "pw")
    assert not credentials_match(None, "admin", "pw")
    assert not credentials_match(basic("admin", "p")["Authorization"], "admin", "pw")
    assert not credentials_match(basic("admin", "")["Authorization"], "admin", "pw")


def test_without_a_password_web_refuses_to_listen_beyond_loopback(rt: Runtime) -> None:
    open_to_all = settings(web_password="", web_address="0.0.0.0:8025")
    with pytest.raises(ConfigError) as refused:
        create_app(open_to_all, rt.redis)
    assert refused.value.variable == "ROUTER_WEB_PASSWORD"
    assert "\n" not in str(refused.value)
    # serve() says so before it binds anything (this port is taken: it would say that).
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for host in ("0.0.0.0", "[::]", "192.0.2.10"):
            with pytest.raises(ConfigError, match=r"^ROUTER_WEB_PASSWORD: is not set"):
                serve(settings(web_password="", web_address=f"{host}:{port}"), rt.redis)
        with pytest.raises(ConfigError, match="ROUTER_WEB_ADDRESS"):  # loopback: allowed
            serve(settings(web_password="", web_address=f"127.0.0.1:{port}"), rt.redis)


def test_on_loopback_without_a_password_the_page_is_open_to_this_machine(rt: Runtime) -> None:
    for address in ("127.0.0.1:8025", "localhost:8025", "[::1]:8025"):
        app = create_app(settings(web_password="", web_address=address), rt.redis)
        assert TestClient(app, base_url=LOCAL).get("/").status_code == 200


def test_csm_router_web_says_so_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    env.update(ROUTER_ALIAS="success@acme.com", ROUTER_POOL=ALICE,
               ROUTER_REDIS_URL="redis://127.0.0.1:1/0",  # never reached
               ROUTER_WEB_ADDRESS="0.0.0.0:8025")
    done = subprocess.run([sys.executable, "-m", "csm_router.cli", "web"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(
        "csm-router: configuration error: ROUTER_WEB_PASSWORD: is not set"), done.stderr


# -- what the lead sees ------------------------------------------------------------------


def test_the_page_shows_the_pool_held_and_overdue_threads_and_the_latest_decisions(
    rt: Runtime, client: TestClient
) -> None:
    write(rt, 1, "Late one", NOW - 2 * 3600 - 12 * 60)  # due after 60 min: 1 h 12 min late
    write(rt, 2, "Invoices", NOW - 60)
    write(rt, 3, "Out of office", NOW - 30, headers="Auto-Submitted: auto-replied\r\n")
    pool.set_away(rt.store, ALICE, until=NOW + 3 * 3600, now=NOW)
    pool.set_away(rt.store, BOB, now=NOW)
    write(rt, 4, "Nobody free", NOW - 5 * 60)  # CS-1003; Carol is off shift: held

    text = visible(page(client))
    assert "2026-11-25 12:00 UTC" in text
    pool_part = text.partition("Pool")[2].partition("Held")[0]
    # name, address, open, overdue, assigned today, on shift, away, weight
    assert "Alice Smith alice@acme.com 1 1 1 yes until 2026-11-25 15:00 UTC (in 3 h) 2" \
        in pool_part
    assert "Bob Jones bob@acme.com 1 0 1 yes yes 1" in pool_part
    assert "carol@acme.com 0 0 0 back 2026-11-28 09:00 UTC (in 2 d 21 h) no 1" in pool_part

    held = text.partition("Held")[2].partition("Overdue")[0]
    assert ("CS-1003 5 min Nobody free Jane Doe 4 <jane4@globex4.com> globex4.com "
            "2026-11-25 11:55 UTC") in held

    overdue = text.partition("Overdue")[2].partition("Latest decisions")[0]
    assert "(1)" in overdue
    assert "CS-1001 1 h 12 min late Late one Jane Doe 1 <jane1@globex1.com> alice@acme.com" \
        in overdue
    assert "Invoices" not in overdue

    recent = text.partition("Latest decisions")[2]
    # Newest first, each with its rule and reason.
    assert recent.index("Nobody free") < recent.index("Out of office") < recent.index(
        "Invoices") < recent.index("Late one")
    assert "5 min ago 2026-11-25 11:55 UTC CS-1003 Nobody free held - round-robin" in recent
    assert "Out of office ignore - automatic" in recent
    assert re.search(r"CS-1002 Invoices forward bob@acme\.com round-robin \S", recent)


def test_where_it_routes_by_language_the_lists_name_each_threads_language(
    rt: Runtime,
) -> None:
    readers = f"{ALICE}=de,en; {BOB}=en; {CAROL}=en"
    client = TestClient(create_app(settings(languages=readers), rt.redis, clock=lambda: NOW),
                        base_url=LOCAL)
    write(rt, 1, "Late one", NOW - 2 * 3600)  # CS-1001, overdue with Alice
    pool.set_away(rt.store, ALICE, now=NOW)
    pool.set_away(rt.store, BOB, now=NOW)
    write(rt, 2, "Nobody free", NOW - 5 * 60)  # CS-1002, held
    for ref in (1001, 1002):
        rt.redis.hset(key("thread", ref), "language", "de")  # as detection recorded it
    text = visible(page(client))
    held = text.partition("Held")[2].partition("Overdue")[0]
    assert "ref waiting subject language customer" in held
    assert "CS-1002 5 min Nobody free German Jane Doe 2" in held
    overdue = text.partition("Overdue")[2].partition("Latest decisions")[0]
    assert "CS-1001 1 h late Late one German Jane Doe 1" in overdue
    # Without ROUTER_LANGUAGES, no such column.
    assert "language" not in visible(page(TestClient(
        create_app(rt.settings, rt.redis, clock=lambda: NOW), base_url=LOCAL))).partition(
        "Held")[2].partition("Latest decisions")[0]


def test_a_csm_at_capacity_is_marked_full(rt: Runtime) -> None:
    client = TestClient(create_app(settings(max_open_per_csm="1"), rt.redis, clock=lambda: NOW),
                        base_url=LOCAL)
    write(rt, 1, "Export question", NOW - 60)  # to Alice, who is then at capacity
    text = visible(page(client))
    assert "CSM open of 1 overdue" in text
    assert "Alice Smith alice@acme.com 1 full 0 1" in text
    assert "Bob Jones bob@acme.com 0 0 0" in text


def test_references_link_to_their_thread_page(rt: Runtime, client: TestClient) -> None:
    write(rt, 1, "Export question", NOW - 60)
    markup = page(client)
    assert '<a href="thread/CS-1001">CS-1001</a>' in markup
    assert "<form" not in markup and "<script" not in markup
    assert '<meta http-equiv="refresh" content="5">' in markup
    assert 'name="viewport"' in markup


def test_customer_text_is_escaped_everywhere(rt: Runtime, client: TestClient) -> None:
    write(rt, 1, SCRIPT, NOW - 2 * 3600, sender=f'"{SCRIPT}" <x@evil.example>')
    pool.set_away(rt.store, ALICE, now=NOW)
    pool.set_away(rt.store, BOB, now=NOW)
    write(rt, 2, f"Re: {SCRIPT} <img src=x onerror=alert(2)>", NOW - 60)  # held
    for path in ("/", "/thread/CS-1001", "/thread/CS-1002"):
        markup = page(client, path)
        assert "<script>" not in markup and "<img" not in markup, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in markup, path


def test_the_thread_page_shows_who_had_it_why_each_move_and_the_subjects(rt: Runtime) -> None:
    now = time.time()  # `reassign` records the real time
    client = TestClient(create_app(rt.settings, rt.redis), base_url=LOCAL)
    write(rt, 1, "Export question", now - 3600)
    write(rt, 2, "Re: [CS-1001] Export question", now - 1800,
          sender="Jane Doe <jane1@globex1.com>")
    rt.store.reassign(1001, BOB, "reassigned by an admin")

    for path in ("/thread/CS-1001", "/thread/1001", "/thread/cs-1001"):
        text = visible(page(client, path))
        assert text.startswith("CS-1001 Export question"), text[:80]
        assert "customer Jane Doe 1 <jane1@globex1.com>" in text
        assert "account globex1.com" in text
        assert "owner bob@acme.com" in text
        history = text.partition("History")[2].partition("Customer messages")[0]
        assert (f"{when(now - 3600)} 1 h ago new alice@acme.com - round-robin "
                "new thread, next in the round-robin <m1@example.com>") in history
        assert ("30 min ago routed alice@acme.com - known-thread owner of the thread "
                "(subject reference [CS-1001]) <m2@example.com>") in history
        assert "reassigned bob@acme.com alice@acme.com - reassigned by an admin" in history
        messages = text.partition("Customer messages")[2]
        assert (f"{when(now - 3600)} 1 h ago Export question alice@acme.com round-robin "
                "forward to alice@acme.com: owed <m1@example.com>") in messages
        assert "Re: [CS-1001] Export question alice@acme.com known-thread" in messages


# The last: 1001 in Arabic-Indic digits, which str.isdigit() alone would take.
@pytest.mark.parametrize("ref", ["CS-4242", "4242", "CS-", "abc", "CS-10x", "-1",
                                 "\u0661\u0660\u0660\u0661"])
def test_an_unknown_or_malformed_reference_is_404(
    rt: Runtime, client: TestClient, ref: str
) -> None:
    write(rt, 1, "Export question", NOW - 60)  # CS-1001 exists
    answer = client.get(f"/thread/{ref}", auth=("admin", PASSWORD))
    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith("text/plain")


def test_the_pages_only_read(rt: Runtime, client: TestClient) -> None:
    write(rt, 1, "Export question", NOW - 60)
    before = {k: rt.redis.dump(k) for k in rt.redis.scan_iter()}
    for path in ("/", "/thread/CS-1001"):
        page(client, path)
        for method in ("POST", "PUT", "DELETE"):
            assert client.request(method, path, auth=("admin", PASSWORD)).status_code == 405
    assert {k: rt.redis.dump(k) for k in rt.redis.scan_iter()} == before


def test_redis_down_is_a_503_not_a_crash(rt: Runtime) -> None:
    server = fakeredis.FakeServer()
    server.connected = False
    down = TestClient(create_app(rt.settings, fakeredis.FakeRedis(server=server)), base_url=LOCAL)
    answer = down.get("/", auth=("admin", PASSWORD))
    assert answer.status_code == 503
    assert "Redis unreachable" in answer.text


def test_references_and_spans_read_as_people_write_them() -> None:
    assert [parse_ref(r) for r in ("CS-1042", "cs-1042", " 1042 ", "[CS-1042]", "")] == [
        1042, 1042, 1042, None, None]
    assert [span(s) for s in (45, 12 * 60 + 5, 3 * 3600 + 300, 3 * 3600, 2 * 86400 + 4 * 3600)] \
        == ["45 s", "12 min", "3 h 5 min", "3 h", "2 d 4 h"]


def test_a_page_template_override_that_fails_on_its_values_answers_one_line_naming_it(
    rt: Runtime, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "status.html.j2").write_text("<h1>Pool</h1>\n{{ nothing_here.attribute }}\n")
    broken = settings(templates_dir=str(tmp_path))
    client = TestClient(create_app(broken, rt.redis, clock=lambda: NOW), base_url=LOCAL)
    answer = client.get("/", auth=("admin", PASSWORD))
    assert answer.status_code == 500
    body = answer.text
    assert body.count("\n") == 1
    assert f"{tmp_path / 'status.html.j2'} line 2 cannot be rendered (UndefinedError" in body
    assert "ROUTER_TEMPLATES_DIR" in body
    assert "status page: template" in caplog.text
