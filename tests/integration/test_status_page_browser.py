"""The lead's status page in a real browser: headless Chromium against a real `csm-router
web` on real Redis, after real mail went through Dovecot, the router and a worker.

Chromium takes HTTP Basic credentials from the URL (`http://admin:pw@host/`): it asks
without them, gets the 401 challenge and asks again with them, as a person's browser
does after its login prompt. What it received is read from its own network log
(`--log-net-log`), so the tests see the status codes Chromium saw.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_processes import kill, start, stop
from test_web import get, owed_since, until

from support.product import ALICE, BOB, CAROL, Product
from support.servers import free_ports

pytestmark = pytest.mark.integration

PASSWORD = "Lead-Pw-7"  # nothing in it needs percent-encoding in a URL
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # Chromium still phones home for its clock and updates: keep every name off the network.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)


@dataclass(frozen=True)
class Web:
    port: int
    workdir: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str = "/", password: str = PASSWORD) -> str:
        return f"http://admin:{password}@127.0.0.1:{self.port}{path}"


@dataclass(frozen=True)
class Visit:
    """What one headless Chromium run printed, and what its network log says it got."""

    stdout: str
    statuses: list[int]  # of the page's own requests, in order (401 then 200 for a login)
    authorized: list[bool]  # whether each of those requests carried an Authorization header


@pytest.fixture(scope="session")
def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        # Fail rather than skip, as for the other servers: `scripts/test` installs it.
        pytest.fail("chromium not found: install Debian's `chromium` (scripts/test does)",
                    pytrace=False)
    return found


@pytest.fixture
def web(product: Product) -> Iterator[Web]:
    """`csm-router web` with a password, as the lead's deployment runs it."""
    (port,) = free_ports(1)
    product.env["ROUTER_WEB_ADDRESS"] = f"127.0.0.1:{port}"
    product.env["ROUTER_WEB_PASSWORD"] = PASSWORD
    proc = start(product, "web", log="web.log")
    server = Web(port, product.workdir)
    until(lambda: get(server.base + "/healthz")[0] in (200, 503), "web to listen",
          (product.workdir / "web.log").read_text)
    yield server
    assert stop(proc) == 0


def visit(chromium: str, tmp_path: Path, url: str, *args: str) -> Visit:
    """Run headless Chromium once on `url` with `args` (`--dump-dom`, `--screenshot=...`)."""
    runs = len(list(tmp_path.glob("chromium-*")))
    profile, netlog = tmp_path / f"chromium-{runs}", tmp_path / f"netlog-{runs}.json"
    done = subprocess.run(
        [chromium, *FLAGS, f"--user-data-dir={profile}", f"--log-net-log={netlog}", *args, url],
        capture_output=True, text=True, timeout=50,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    statuses, authorized = page_responses(netlog, url)
    return Visit(done.stdout, statuses, authorized)


def page_responses(netlog: Path, url: str) -> tuple[list[int], list[bool]]:
    """From Chromium's NetLog: the status of each response to the page's own request."""
    log = json.loads(netlog.read_text())
    kinds = {number: name for name, number in log["constants"]["logEventTypes"].items()}
    # The log shows the URL without its credentials.
    bare = re.sub(r"//[^@/]*@", "//", url)
    sources: set[int] = set()
    statuses: list[int] = []
    authorized: list[bool] = []
    for event in log["events"]:
        kind, params = kinds.get(event["type"]), event.get("params") or {}
        source = event["source"]["id"]
        if kind == "URL_REQUEST_START_JOB" and str(params.get("url", "")).startswith(bare) \
                and params.get("request_type") == "main frame":
            sources.add(source)
        elif kind == "HTTP_TRANSACTION_SEND_REQUEST_HEADERS" and source in sources:
            authorized.append(any(h.startswith("Authorization:") for h in params["headers"]))
        elif kind == "HTTP_TRANSACTION_READ_RESPONSE_HEADERS" and source in sources:
            statuses.append(int(params["headers"][0].split()[1]))
    return statuses, authorized


def visible(markup: str) -> str:
    """The text a reader sees in a dumped DOM: no head, no tags, entities decoded."""
    body = markup.partition("<body>")[2]
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


def test_the_lead_sees_the_pool_the_routed_threads_and_the_decisions_in_chromium(
    product: Product, web: Web, chromium_binary: str, tmp_path: Path
) -> None:
    product.write("Jane Doe <jane@globex.com>", "Renewal <b>terms</b> & pricing")
    product.write("Joe Roe <joe@initech.io>", "Onboarding the new team")
    product.write("Jane Doe <jane@globex.com>", "Out of office",
                  headers={"Auto-Submitted": "auto-replied"})
    sent = product.route()
    forwards = Counter(r.rcpt_tos[0] for r in sent)
    assert sum(forwards.values()) == 2
    renewal = next(r for r in sent if "Renewal" in str(r.message["Subject"]))
    ref = re.search(r"\[(CS-\d+)\]", str(renewal.message["Subject"]))
    assert ref is not None
    owner = renewal.rcpt_tos[0]
    for address in (ALICE, BOB, CAROL):
        product.cli("away", address)
    product.write("Ann Poe <ann@hooli.com>", "Nobody is free for this")
    product.route()  # held; the lead is told

    seen = visit(chromium_binary, tmp_path, web.url(), "--dump-dom")
    # The challenge, then the same request with the credentials from the URL.
    assert seen.statuses == [401, 200], seen
    assert seen.authorized == [False, True]
    dom = seen.stdout
    # The customer's markup arrived as text, not as an element.
    assert "Renewal &lt;b&gt;terms&lt;/b&gt; &amp; pricing" in dom
    assert "<b>terms</b>" not in dom
    assert f'<a href="thread/{ref[1]}">{ref[1]}</a>' in dom
    text = visible(dom)
    pool = text.partition("Pool")[2].partition("Held")[0]
    for name, address, weight in (("Alice Smith", ALICE, 2), ("Bob Jones", BOB, 1),
                                  ("Carol Diaz", CAROL, 1)):
        n = forwards.get(address, 0)
        # name, address, open, overdue, assigned today, on shift, away, weight
        assert f"{name} {address} {n} 0 {n} yes yes {weight}" in pool, pool
    held = text.partition("Held")[2].partition("Overdue")[0]
    assert re.search(r"CS-\d+ \d+ s Nobody is free for this Ann Poe <ann@hooli\.com> "
                     r"hooli\.com \d{4}-\d\d-\d\d \d\d:\d\d UTC", held), held
    assert "Nothing overdue." in text
    recent = text.partition("Latest decisions")[2]
    assert re.search(rf"{ref[1]} Renewal <b>terms</b> & pricing forward {owner} round-robin "
                     r"new thread, next in the round-robin", recent), recent
    assert "Out of office ignore - automatic" in recent
    assert "Nobody is free for this held - round-robin" in recent

    # The reference's link, followed in Chromium as the lead would tap it.
    thread = visit(chromium_binary, tmp_path, web.url(f"/thread/{ref[1]}"), "--dump-dom")
    assert thread.statuses == [401, 200]
    history = visible(thread.stdout)
    assert history.startswith(f"{ref[1]} Renewal <b>terms</b> & pricing"), history[:120]
    assert f"new {owner} - round-robin new thread, next in the round-robin" in history
    assert f"Renewal <b>terms</b> & pricing {owner} round-robin" in history

    # What a phone shows (kept in this test's temp dir).
    for name, path in (("status", "/"), ("thread", f"/thread/{ref[1]}")):
        shot = tmp_path / f"{name}.png"
        taken = visit(chromium_binary, tmp_path, web.url(path), f"--screenshot={shot}",
                      "--window-size=412,915", "--hide-scrollbars")
        assert taken.statuses == [401, 200]
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        print(f"screenshot of {path} on a 412x915 phone: {shot}")


def test_a_wrong_password_gets_401_in_chromium_and_metrics_stay_open(
    product: Product, web: Web, chromium_binary: str, tmp_path: Path
) -> None:
    product.write("Jane Doe <jane@globex.com>", "Renewal terms")
    product.route()

    wrong = visit(chromium_binary, tmp_path, web.url(password="not-it"), "--dump-dom")
    # Chromium tried the credentials and was refused again; it shows no page at all.
    assert wrong.statuses == [401, 401], wrong
    assert wrong.authorized == [False, True]
    assert "Renewal terms" not in wrong.stdout and "pool" not in wrong.stdout
    anonymous = visit(chromium_binary, tmp_path, web.base + "/", "--dump-dom")
    assert anonymous.statuses == [401]
    assert "Renewal terms" not in anonymous.stdout

    # The same through a plain HTTP client: the status code and the challenge.
    for auth in ("", "admin:not-it", f"root:{PASSWORD}"):
        request = urllib.request.Request(web.base + "/")
        if auth:
            request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 401
        assert refused.value.headers["WWW-Authenticate"] == 'Basic realm="csm-router"'
    assert get(web.base + "/metrics")[0] == 200
    assert get(web.base + "/healthz")[0] in (200, 503)  # answered, without a password
    assert get(web.base + "/thread/CS-1001")[0] == 401


def test_the_page_tells_a_dead_router_no_worker_and_a_stranded_thread_in_chromium(
    product: Product, web: Web, chromium_binary: str, tmp_path: Path
) -> None:
    for address in (ALICE, BOB, CAROL):
        product.cli("away", address)
    router = start(product, "run", log="router.log")  # and no worker at all
    try:
        product.write("Ann Poe <ann@hooli.com>", "Nobody is free for this")
        redis = product.redis()
        until(lambda: redis.zcard("csm:held") == 1 and redis.zcard("csm:outbox") == 1,
              "the thread held and the lead's notice owed",
              (product.workdir / "router.log").read_text)
        # Two hours stranded and the notice owed for two and a half minutes, as if that
        # long had passed: past the first-response target and the minute's grace.
        (held,) = redis.zrange("csm:held", 0, -1)
        redis.zadd("csm:held", {held: time.time() - 7200})
        assert owed_since(redis, 150) == 1
        kill(router)
        health = web.base + "/healthz"
        until(lambda: "silent for" in get(health)[1], "the router to be late",
              lambda: get(health)[1])
        status, said = get(health)
        assert status == 503
        assert "- no worker: 1 send owed for 2 min" in said
        assert " pid " not in said and product.alias not in said  # not logged in

        seen = visit(chromium_binary, tmp_path, web.url(), "--dump-dom")
        assert seen.statuses == [401, 200], seen
        text = visible(seen.stdout)
        top = text.partition("taking threads")[0]
        assert re.search(r"Router silent for \d+ s: nothing new is being routed", top), top
        assert "No worker: 1 send owed for 2 min: nothing is being sent" in top
        assert "Redis keeps no data on disk" in top  # the shared test Redis keeps nothing
        held_part = text.partition("Held (")[2].partition("Overdue")[0]
        assert held_part.startswith(
            "1) Waiting because everyone is away. 1 past the first-response target: they go "
            "out first, oldest first."), held_part
        assert re.search(r"CS-\d+ 2 h overdue Nobody is free for this "
                         r"Ann Poe <ann@hooli\.com>", held_part), held_part
        # The banners are the markup's first paragraphs, above the figures.
        assert seen.stdout.index('class="banner"') < seen.stdout.index('class="figures"')
    finally:
        if router.poll() is None:
            stop(router)
