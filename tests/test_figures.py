"""The lead's figures tell one truth: `status`, `report`, the digest and /metrics count the
same things the same way, from tallies the real scripts keep (fakeredis with Lua)."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from csm_router.cli import figures as cli_figures
from csm_router.cli.main import main as cli_main
from csm_router.config import load_settings
from csm_router.lead import digest, poolstatus, report
from csm_router.lead.metrics import RedisCollector
from csm_router.runtime import Runtime
from test_digest import Week

ALICE, BOB, CAROL = "alice@acme.com", "bob@acme.com", "carol@acme.com"
AUTHSERV = "mx.acme.test"
TECHNICAL = ("Since this morning the API returns HTTP 500 on every call to /v2/export, with "
             "a stack trace in the response body. Our nightly sync is failing.")
# Wed 2 Dec 2026, 10:00 in Berlin (the lead's zone): inside 2026-W49 (Mon 30 Nov - Sun 6 Dec).
NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC).timestamp()
TODAY = date(2026, 12, 2)


def settings(pool_: str = f"{ALICE}, {BOB}, {CAROL}", **kw: Any) -> Any:
    return load_settings(
        alias="Acme Customer Success <success@acme.com>", pool=pool_, smtp_url="smtp://x:25",
        away="", overflow_address="cs-lead@acme.com", support_address="support@acme.com",
        trusted_authserv_id=AUTHSERV, first_response_minutes=60,
        hours="cs-lead@acme.com=Europe/Berlin 08-17 Mon-Fri", **({"max_open_per_csm": 0} | kw))


class Mail(Week):
    """Mail through the real record script, at chosen times: `mail(sender, subject, at)`."""

    __call__ = Week.mail


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def runtime(server: fakeredis.FakeServer, **kw: Any) -> Runtime:
    rt = Runtime.from_settings(settings(**kw), fakeredis.FakeRedis(server=server))
    rt.store.ensure_sequence()
    return rt


@pytest.fixture
def rt(server: fakeredis.FakeServer) -> Runtime:
    return runtime(server)


def week_figures(rt: Runtime, since: date = TODAY, days: int = 1) -> report.Report:
    return report.build(rt.store, since, since + timedelta(days=days))


def by_csm(figures: report.Report) -> dict[str, report.CsmFigures]:
    return {c.address: c for c in figures.csms}


def metric(rt: Runtime, name: str, now: float) -> dict[str, float]:
    """One per-CSM gauge of /metrics at `now`."""
    collector = RedisCollector(rt.redis, rt.settings)
    monkey = pytest.MonkeyPatch()
    monkey.setattr(time, "time", lambda: now)
    try:
        families = {f.name: f for f in collector.collect()}
    finally:
        monkey.undo()
    return {s.labels["csm"]: s.value for s in families[name].samples}


def test_a_takeover_by_reply_counts_once_as_taken_by_the_replier_everywhere(rt: Runtime) -> None:
    mail = Mail(rt)
    first = mail("Ann <ann@globex.com>", "Export", NOW)
    assert first.owner == ALICE
    # Bob answers Alice's customer: the thread is his now, taken once.
    mail(BOB, f"Re: [CS-{first.ref}] Export", NOW + 60, staff=True)
    mail(BOB, f"Re: [CS-{first.ref}] Export", NOW + 120, staff=True)  # his already
    figures = by_csm(week_figures(rt))
    assert (figures[ALICE].taken, figures[BOB].taken) == (1, 1)
    status = {r.address: r for r in poolstatus.status(rt.store, NOW + 180)}
    assert (status[ALICE].taken_today, status[BOB].taken_today) == (1, 1)
    assert status[BOB].assigned_today == 1  # the old name reads the same count
    assert metric(rt, "csm_router_threads_taken_today", NOW + 180) == {ALICE: 1, BOB: 1,
                                                                       CAROL: 0}


def test_back_from_support_to_the_same_csm_is_not_taken_again(rt: Runtime) -> None:
    mail = Mail(rt)
    first = mail("Ann <ann@globex.com>", "Export", NOW)
    mail(first.owner, f"Re: [CS-{first.ref}] Export", NOW + 60, staff=True,
         body="#support\r\n\r\nOver to our engineers.")
    mail("support@acme.com", f"Re: [CS-{first.ref}] Export", NOW + 120, staff=True,
         body="#success\r\n\r\nFixed.")
    assert by_csm(week_figures(rt))[first.owner].taken == 1
    assert next(r for r in poolstatus.status(rt.store, NOW + 180)
                if r.address == first.owner).taken_today == 1


def test_a_csm_who_left_the_pool_keeps_their_first_responses_in_the_report(
    rt: Runtime, server: fakeredis.FakeServer
) -> None:
    mail = Mail(rt)
    threads = [mail(f"C{n} <c{n}@customer{n}.com>", f"Q{n}", NOW + n) for n in range(3)]
    assert [t.owner for t in threads] == [ALICE, BOB, CAROL]
    mail(CAROL, f"Re: [CS-{threads[2].ref}] Q2", NOW + 2 + 13, staff=True)  # 13 seconds
    smaller = runtime(server, pool_=f"{ALICE}, {BOB}")  # Carol has left
    figures = week_figures(smaller)
    carol = by_csm(figures)[CAROL]
    assert not carol.in_pool and by_csm(figures)[ALICE].in_pool
    assert (carol.taken, carol.replies, carol.median_first_response_seconds) == (1, 1, 13.0)
    assert [c.address for c in figures.departed] == [CAROL]
    printed = figures.as_dict()
    assert next(c for c in printed["csms"] if c["address"] == CAROL)["in_pool"] is False
    row = next(r for r in figures.csv().splitlines() if r.startswith(f"csm,{CAROL},"))
    assert ",no" in row


def test_a_straight_to_support_thread_is_accounted_for_in_report_and_digest(
    rt: Runtime
) -> None:
    mail = Mail(rt)
    mail("Ann <ann@globex.com>", "Export", NOW)
    technical = mail("Ida <ida@initech.io>", "API down", NOW + 60, body=TECHNICAL)
    assert not technical.owner and technical.new_thread
    # The customer writes again in the Support thread: nothing new moves to Support.
    mail("Ida <ida@initech.io>", f"Re: [CS-{technical.ref}] API down", NOW + 120,
         body=TECHNICAL)
    figures = week_figures(rt)
    t = figures.threads
    assert (t.came_in, t.came_in_to_csm, t.came_in_held, t.straight_to_support) == (2, 1, 0, 1)
    assert t.to_support == 1
    assert sum(c.to_support for c in figures.csms) == 0  # no CSM handed it over
    assert figures.as_dict()["threads"]["straight_to_support"] == 1
    text = str(mail_parts(digest.render_digest(rt.settings, figures, "2026-W49"))[0])
    assert "to Support: 1, of which straight from the customer 1" in text
    assert "came in: 2 (to a CSM at once 1, held for a free CSM 0, straight to Support 1)" \
        in text


def test_a_thread_nobody_can_take_is_held_and_counted_as_came_in(server: fakeredis.FakeServer
                                                                 ) -> None:
    rt = runtime(server, max_open_per_csm=1)
    mail = Mail(rt)
    for n in range(4):  # three CSMs with room for one each: the fourth is held
        mail(f"C{n} <c{n}@customer{n}.com>", f"Q{n}", NOW + n)
    t = week_figures(rt).threads
    assert (t.came_in, t.came_in_to_csm, t.came_in_held) == (4, 3, 1)
    assert poolstatus.held_count(rt.store) == 1


def test_an_escalation_with_nobody_available_went_overdue_and_is_held(
    server: fakeredis.FakeServer
) -> None:
    rt = runtime(server, pool_=ALICE)
    mail = Mail(rt)
    mail("Ann <ann@globex.com>", "Export", NOW)
    assert next(r for r in poolstatus.status(rt.store, NOW + 3601)).overdue_now == 1
    assert metric(rt, "csm_router_overdue_threads", NOW + 3601) == {ALICE: 1}
    rt.store.sweep(NOW + 3601)
    figures = week_figures(rt)
    alice = by_csm(figures)[ALICE]
    assert (alice.went_overdue, alice.overdue) == (1, 1)
    assert (figures.threads.went_overdue, figures.threads.went_overdue_held) == (1, 1)
    assert next(r for r in poolstatus.status(rt.store, NOW + 3602)).overdue_now == 0  # held now
    assert poolstatus.held_count(rt.store) == 1
    assert next(c for c in figures.as_dict()["csms"])["went_overdue"] == 1


def test_three_gmail_customers_are_three_accounts(rt: Runtime) -> None:
    mail = Mail(rt)
    for n, name in enumerate(("ann", "ben", "cid")):
        mail(f"{name} <{name}@gmail.com>", f"Question {n}", NOW + n)
    accounts = {a.account: a for a in week_figures(rt).accounts}
    assert set(accounts) == {"ann@gmail.com", "ben@gmail.com", "cid@gmail.com"}
    assert all(a.touched_by == 1 and not a.flagged for a in accounts.values())


def test_a_thread_recorded_with_its_provider_as_account_counts_its_person(rt: Runtime) -> None:
    """Threads recorded before free-mail customers were people carry `gmail.com` as their
    account: the figures name the person all the same."""
    mail = Mail(rt)
    threads = [mail(f"{n} <{n}@gmail.com>", f"Question {n}", NOW + i)
               for i, n in enumerate(("ann", "ben", "cid"))]
    for t in threads:
        rt.redis.hset(f"csm:thread:{t.ref}", "account", "gmail.com")
    rt.redis.delete(f"csm:daily:{TODAY.isoformat()}:touched")
    for t, csm in zip(threads, (BOB, CAROL, ALICE), strict=True):  # each taken over
        mail(csm, f"Re: [CS-{t.ref}] Question", NOW + 60, staff=True)
    accounts = {a.account: a.touched_by for a in week_figures(rt).accounts}
    assert accounts == {"ann@gmail.com": 1, "ben@gmail.com": 1, "cid@gmail.com": 1}


def test_a_13_second_first_response_reads_13_s_and_stays_a_number_in_json(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    mail = Mail(rt)
    first = mail("Ann <ann@globex.com>", "Export", now - 60)
    mail(ALICE, f"Re: [CS-{first.ref}] Export", now - 60 + 13, staff=True)
    monkeypatch.setattr(cli_figures, "_runtime", lambda: rt)
    monkeypatch.setenv("COLUMNS", "200")
    today = datetime.fromtimestamp(now, rt.settings.report_zone).date()
    assert cli_main(["status"]) == 0
    shown = capsys.readouterr().out
    alice = next(line for line in shown.splitlines() if ALICE in line)
    assert "13 s" in alice and "0 min" not in alice
    assert cli_main(["report", "--since", today.isoformat()]) == 0
    shown = capsys.readouterr().out
    assert "13 s" in next(line for line in shown.splitlines() if ALICE in line)
    assert cli_main(["report", "--since", today.isoformat(), "--json"]) == 0
    row = next(c for c in json.loads(capsys.readouterr().out)["csms"] if c["address"] == ALICE)
    assert row["median_first_response_seconds"] == 13.0
    assert row["median_first_response_minutes"] == pytest.approx(13 / 60, abs=0.01)
    assert cli_main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    alice_status = next(r for r in status["pool"] if r["address"] == ALICE)
    assert alice_status["median_first_response_seconds"] == 13.0
    assert alice_status["median_first_response_minutes"] > 0
    figures = week_figures(rt, today)
    text, html = mail_parts(digest.render_digest(rt.settings, figures, "2026-W49"))
    assert "first response median 13 s / p90 13 s" in text
    assert ">13 s<" in html


def test_report_and_status_name_the_leads_zone_and_what_overdue_means(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        cli_main(["report", "--help"])
    helped = capsys.readouterr().out
    assert "(UTC)" not in helped and "lead's time zone" in helped
    monkeypatch.setattr(cli_figures, "_runtime", lambda: rt)
    monkeypatch.setenv("COLUMNS", "200")
    assert cli_main(["report", "--since", "2026-11-30", "--until", "2026-12-07",
                     "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["zone"] == "Europe/Berlin"
    assert printed["since_utc"] == "2026-11-29T23:00:00+00:00"  # midnight in Berlin
    assert printed["until_utc"] == "2026-12-06T23:00:00+00:00"
    assert all({"went_overdue", "overdue", "in_pool"} <= set(c) for c in printed["csms"])
    assert cli_main(["report", "--since", "2026-11-30", "--until", "2026-12-07"]) == 0
    table = capsys.readouterr().out
    assert "Europe/Berlin" in table and "went overdue" in table
    assert cli_main(["status"]) == 0
    table = capsys.readouterr().out
    assert "overdue now" in table and "taken today" in table and "Europe/Berlin" in table
    assert cli_main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["zone"] == "Europe/Berlin"
    assert all({"overdue_now", "overdue", "taken_today", "assigned_today"} <= set(r)
               for r in status["pool"])


def mail_parts(mail: EmailMessage) -> tuple[str, str]:
    plain, html = mail.get_body(("plain",)), mail.get_body(("html",))
    assert plain is not None and html is not None
    return str(plain.get_content()), str(html.get_content())


def test_the_digest_preview_of_2026_w49_is_the_mail_with_its_label_and_figures(
    rt: Runtime, tmp_path: Path
) -> None:
    mail = Mail(rt)
    first = mail("Ann <ann@globex.com>", "Export", NOW)
    mail(ALICE, f"Re: [CS-{first.ref}] Export", NOW + 13, staff=True)
    mail("Ida <ida@initech.io>", "API down", NOW + 60, body=TECHNICAL)
    mail("Zed <zed@umbrella.com>", "Next week", NOW + 7 * 86400)  # 2026-W50: not in it
    paths = digest.write_preview(rt.store, "2026-W49", tmp_path)
    assert [p.name for p in paths] == ["csm-digest-2026-W49.eml", "csm-digest-2026-W49.html"]
    sent = message_from_bytes(paths[0].read_bytes(), policy=policy.default)
    assert isinstance(sent, EmailMessage)
    assert sent["To"] == "cs-lead@acme.com"
    assert sent["Subject"].startswith(
        "Customer Success weekly digest 2026-W49 (30 Nov - 06 Dec 2026): 2 new threads, "
        "1 taken")
    text, _ = mail_parts(sent)
    assert "Customer Success 2026-W49, Mon 30 Nov to Sun 06 Dec 2026" in text
    assert "threads taken 1, replies 1, first response median 13 s" in text
    assert "umbrella.com" not in text
    assert re.search(r"made 2\d{3}-\d\d-\d\d \d\d:\d\d CE[S]?T", text)  # the lead's zone
    page = paths[1].read_text()
    assert 'src="data:image/png;base64,' in page and "cid:" not in page


def test_the_digest_preview_defaults_to_the_last_complete_week(
    rt: Runtime, tmp_path: Path
) -> None:
    label, since, until = digest.last_complete_week(rt.settings, NOW)
    assert (label, since, until) == ("2026-W48", date(2026, 11, 23), date(2026, 11, 30))
    monday_early = datetime(2026, 12, 7, 5, 0, tzinfo=UTC).timestamp()  # before it is due
    assert digest.last_complete_week(rt.settings, monday_early)[0] == "2026-W49"
    assert digest.due_week(rt.settings, monday_early) is None
    (eml, _) = digest.write_preview(rt.store, None, tmp_path)
    expected = digest.last_complete_week(rt.settings, time.time())[0]
    assert eml.name == f"csm-digest-{expected}.eml"


@pytest.mark.parametrize("week", ["2026-49", "2026-W54", "W49", "2026-W4x"])
def test_a_malformed_week_is_one_line_and_exit_1(
    rt: Runtime, week: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_figures, "_runtime", lambda: rt)
    assert cli_main(["digest", "--preview", "--week", week, "--output", str(tmp_path)]) == 1
    said = capsys.readouterr().err.strip()
    assert len(said.splitlines()) == 1 and "ISO week such as 2026-W49" in said
    assert list(tmp_path.iterdir()) == []


def test_digest_preview_prints_the_paths_it_wrote(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_figures, "_runtime", lambda: rt)
    assert cli_main(["digest", "--preview", "--week", "2026-W49", "--output",
                     str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "out" / "csm-digest-2026-W49.eml"),
                       str(tmp_path / "out" / "csm-digest-2026-W49.html")]
    assert all(Path(p).stat().st_size > 0 for p in printed)
