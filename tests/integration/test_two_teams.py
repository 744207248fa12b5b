"""Two teams in one deployment on real servers: two alias mailboxes on Dovecot, two pools,
one `csm-router run` and one `csm-router worker` for both."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator

import pytest
from test_processes import start, stop
from test_web import get, until

from csm_router.demo.relay import Received
from support.product import Product, customer_mail
from support.servers import DovecotServer, Mailbox, free_ports, wait_until

pytestmark = pytest.mark.integration

EU_POOL = {"alice@acme.com", "bob@acme.com"}
US_POOL = {"carol@acme.com", "dan@acme.com"}


@pytest.fixture
def us_mailbox(dovecot: DovecotServer, mailbox: Mailbox) -> Iterator[Mailbox]:
    box = Mailbox(dovecot, mailbox.user.replace("success-", "success-us-"))
    yield box
    box.close()


@pytest.fixture
def teams(product: Product, us_mailbox: Mailbox) -> Product:
    """The product with team eu (the shared settings) and team us (its own)."""
    product.env |= {
        "ROUTER_TEAMS": "eu,us",
        "ROUTER_POOL": ", ".join(sorted(EU_POOL)),
        "ROUTER_US_POOL": ", ".join(sorted(US_POOL)),
        "ROUTER_US_ALIAS": f"Acme US Success <{us_mailbox.user}>",
        "ROUTER_US_IMAP_URL": us_mailbox.imap_url,
    }
    return product


def team_of(received: Received) -> str:
    (to,) = received.rcpt_tos
    return "eu" if to in EU_POOL else "us" if to in US_POOL else to


def test_each_alias_reaches_only_its_own_pool_and_a_reply_stays_in_its_team(
        teams: Product, us_mailbox: Mailbox) -> None:
    eu_alias, us_alias = teams.alias, us_mailbox.user
    teams.write("Jane Doe <jane@globex.com>", "Export", to=eu_alias)
    _, raw = customer_mail("Joe Roe <joe@initech.io>", "Invoice", to=us_alias)
    us_mailbox.deliver(raw)
    sent = teams.route()
    assert sorted((team_of(r), str(r.message["Subject"])) for r in sent) == [
        ("eu", "[CS-1001] Export"), ("us", "[CS-1001] Invoice")]
    by_team = {team_of(r): r for r in sent}
    # A forward names its team's alias in From and Reply-To.
    for team, alias in (("eu", eu_alias), ("us", us_alias)):
        assert alias in str(by_team[team].message["From"])
        assert alias in str(by_team[team].message["Reply-To"])
    # Joe answers the US thread: it stays with the US CSM who has it.
    _, reply = customer_mail("Joe Roe <joe@initech.io>", "Re: [CS-1001] Invoice", to=us_alias,
                             in_reply_to=str(by_team["us"].message["Message-ID"]))
    us_mailbox.deliver(reply)
    (again,) = teams.route()
    assert again.rcpt_tos == by_team["us"].rcpt_tos
    status = teams.cli("status").stdout
    assert "== team eu" in status and "== team us" in status


def test_the_same_message_to_both_aliases_is_one_thread_in_each_team(
        teams: Product, us_mailbox: Mailbox) -> None:
    _, raw = customer_mail("Jane Doe <jane@globex.com>", "Both of you", to=teams.alias,
                           cc=us_mailbox.user)
    teams.deliver(raw)
    us_mailbox.deliver(raw)
    sent = teams.route()
    assert sorted(team_of(r) for r in sent) == ["eu", "us"]
    assert {str(r.message["Subject"]) for r in sent} == {"[CS-1001] Both of you"}
    for team in ("eu", "us"):
        threads = teams.cli("threads", "--json", "--team", team).stdout
        assert threads.count('"ref"') == 1, threads


def test_one_web_process_serves_every_team(teams: Product, us_mailbox: Mailbox) -> None:
    teams.write("Jane Doe <jane@globex.com>", "Export", to=teams.alias)
    _, raw = customer_mail("Joe Roe <joe@initech.io>", "Invoice", to=us_mailbox.user)
    us_mailbox.deliver(raw)
    assert len(teams.route()) == 2
    (port,) = free_ports(1)
    teams.env["ROUTER_WEB_ADDRESS"] = f"127.0.0.1:{port}"
    base = f"http://127.0.0.1:{port}"
    web = start(teams, "web", log="web.log")
    try:
        until(lambda: get(base + "/healthz")[0] in (200, 503), "web to listen",
              (teams.workdir / "web.log").read_text)
        status, index = get(base + "/")
        assert status == 200 and 'href="eu/"' in index and 'href="us/"' in index
        status, eu_page = get(base + "/eu/")
        assert status == 200 and "Export" in eu_page and "Invoice" not in eu_page
        assert "team eu" in eu_page
        status, us_thread = get(base + "/us/thread/CS-1001")
        assert status == 200 and "Invoice" in us_thread
        _, health = get(base + "/healthz")
        assert "eu: " in health and "us: " in health
        _, metrics = get(base + "/metrics")
        assert 'team="eu"' in metrics and 'team="us"' in metrics
    finally:
        assert stop(web) == 0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (ended, its parent not yet told) counts as gone.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1][0] != "Z"


def test_one_router_for_every_team_and_its_processes_end_with_it(
        teams: Product, us_mailbox: Mailbox) -> None:
    router = start(teams, "run", log="router.log")
    try:
        teams.write("Jane Doe <jane@globex.com>", "Live", to=teams.alias)
        _, raw = customer_mail("Joe Roe <joe@initech.io>", "Live too", to=us_mailbox.user)
        us_mailbox.deliver(raw)
        wait_until(lambda: len(subprocess.run(["pgrep", "-P", str(router.pid)],
                                              capture_output=True).stdout.split()) == 2,
                   "a router process per team")
        children = [int(p) for p in subprocess.run(["pgrep", "-P", str(router.pid)],
                                                   capture_output=True).stdout.split()]
        # A worker that keeps listening: a burst could start before a router has queued.
        worker = start(teams, "worker", log="worker.log")
        try:
            wait_until(lambda: len(teams.smtp.messages) == 2, "both teams routed", timeout=60)
        finally:
            assert stop(worker) == 0
        log = (teams.workdir / "router.log").read_text()
        assert "[eu] csm_router" in log and "[us] csm_router" in log
        # Each team's router settled into IDLE once: it sees its own team's Redis marker,
        # not another's (which would make it reconnect on every pass).
        for team in ("eu", "us"):
            assert log.count(f"[{team}] csm_router.app.router: watching") == 1, log
        assert "lost its data" not in log
    finally:
        os.kill(router.pid, signal.SIGKILL)  # the command alone, as an OOM killer would
        router.wait(timeout=10)
    wait_until(lambda: not any(alive(pid) for pid in children), "the team processes to end",
               timeout=15)


def test_sigterm_stops_every_team_cleanly(teams: Product) -> None:
    worker = start(teams, "worker", log="worker.log")
    wait_until(lambda: len(subprocess.run(["pgrep", "-P", str(worker.pid)],
                                          capture_output=True).stdout.split()) == 2,
               "a worker process per team")
    children = [int(p) for p in subprocess.run(["pgrep", "-P", str(worker.pid)],
                                               capture_output=True).stdout.split()]
    log = teams.workdir / "worker.log"
    wait_until(lambda: all(f"Listening on {team}-deliver" in log.read_text()
                           for team in ("eu", "us")), "both teams' workers listening")
    assert stop(worker) == 0  # SIGTERM: each team's worker finishes and stops
    assert not any(alive(pid) for pid in children)


def test_two_teams_on_one_mailbox_are_refused_at_start(teams: Product) -> None:
    del teams.env["ROUTER_US_IMAP_URL"]  # both teams would watch the shared mailbox
    done = teams.cli("run", "--exit-when-idle", check=False)
    assert done.returncode == 2
    assert "ROUTER_US_IMAP_URL: names the mailbox team eu watches" in done.stderr
    assert teams.smtp.messages == []
