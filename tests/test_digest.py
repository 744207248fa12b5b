"""The lead's figures: a week seeded through the real scripts, then the report, the
`report --json` command and the weekly digest built from it."""

from __future__ import annotations

import io
import json
from datetime import UTC, date, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import fakeredis
import pytest
from PIL import Image

from csm_router.cli import figures as cli_figures
from csm_router.cli.main import main as cli_main
from csm_router.config import load_settings
from csm_router.core.decide import decide
from csm_router.core.message import parse
from csm_router.demo.relay import RecordingSmtp
from csm_router.lead import report
from csm_router.lead.digest import BAR_WIDTH, LABEL, ROW, bars, drawable, due_week, render_digest
from csm_router.runtime import Runtime
from csm_router.sends import jobs
from csm_router.state.store import message_key

ALICE, BOB, CAROL = "alice@acme.com", "bob@acme.com", "carol@acme.com"
AUTHSERV = "mx.acme.test"
TECHNICAL = ("Since this morning the API returns HTTP 500 on every call to /v2/export, with "
             "a stack trace in the response body. Our nightly sync is failing.")
MONDAY = datetime(2026, 11, 16, 9, 0, tzinfo=UTC).timestamp()  # the week seeded
DIGEST_MONDAY = datetime(2026, 11, 23, tzinfo=UTC).date()


class Week:
    """A week of mail through the real record and sweep scripts, at chosen times."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.n = 0

    def mail(self, sender: str, subject: str, at: float, body: str = "Hello\r\n",
             staff: bool = False) -> Any:
        self.n += 1
        proof = (f"Authentication-Results: {AUTHSERV}; dmarc=pass header.from=acme.com\r\n"
                 if staff else "")
        raw = (f"{proof}From: {sender}\r\nTo: success@acme.com\r\nSubject: {subject}\r\n"
               f"Message-ID: <w{self.n}@example.com>\r\n\r\n{body}\r\n").encode()
        msg = parse(raw)
        store = self.rt.store
        snap = store.snapshot(msg, at, support_rules=self.rt.support_rules)
        return store.record(message_key(msg, raw), msg, decide(msg, snap), at, raw=raw)


@pytest.fixture
def rt(smtp: RecordingSmtp) -> Runtime:
    settings = load_settings(
        alias="Acme Customer Success <success@acme.com>", pool=f"{ALICE}, {BOB}, {CAROL}",
        smtp_url=smtp.url, away="", max_open_per_csm=0, overflow_address="cs-lead@acme.com",
        support_address="support@acme.com", trusted_authserv_id=AUTHSERV,
        hours="cs-lead@acme.com=Europe/Berlin 08-17 Mon-Fri", first_response_minutes=60)
    runtime = Runtime.from_settings(settings, fakeredis.FakeRedis())
    runtime.store.ensure_sequence()
    return runtime


@pytest.fixture
def seeded(rt: Runtime) -> Runtime:
    week = Week(rt)
    hour = 3600.0
    # Three people at globex.com: round-robin gives them to three CSMs (flagged).
    g1 = week.mail("Ann <ann@globex.com>", "Export", MONDAY)
    g2 = week.mail("Ben <ben@globex.com>", "Billing", MONDAY + 60)
    g3 = week.mail("Cid <cid@globex.com>", "Seats", MONDAY + 120)
    assert [g1.owner, g2.owner, g3.owner] == [ALICE, BOB, CAROL]
    i1 = week.mail("Ida <ida@initech.io>", "SSO", MONDAY + hour)  # to Alice
    # First responses: Alice after 30 and 10 minutes, Bob after 20.
    week.mail(ALICE, f"Re: [CS-{g1.ref}] Export", MONDAY + 1800, staff=True)
    week.mail(BOB, f"Re: [CS-{g2.ref}] Billing", MONDAY + 60 + 1200, staff=True)
    week.mail(ALICE, f"Re: [CS-{i1.ref}] SSO", MONDAY + hour + 600, staff=True)
    week.mail(ALICE, f"Re: [CS-{i1.ref}] SSO", MONDAY + 2 * hour, staff=True)  # not a first
    # Carol never answers Cid: overdue, escalated to the next CSM in the round-robin.
    result = rt.store.sweep(MONDAY + 2 * hour)
    (escalated,) = result["escalations"]
    assert (escalated["previous"], escalated["owner"]) == (CAROL, BOB)
    # Bob's customer writes something technical; Bob hands the thread to Support.
    week.mail("Ben <ben@globex.com>", f"Re: [CS-{g2.ref}] Billing", MONDAY + 3 * hour,
              body=TECHNICAL)
    week.mail(BOB, f"Re: [CS-{g2.ref}] Billing", MONDAY + 4 * hour, staff=True,
              body="#support\r\n\r\nOur engineers will take this one.")
    # Next week's mail is not in this week's figures.
    week.mail("Zed <zed@umbrella.com>", "Later", MONDAY + 8 * 86400)
    return rt


def figures(rt: Runtime) -> report.Report:
    return report.build(rt.store, date(2026, 11, 16), DIGEST_MONDAY)


def test_the_week_in_figures(seeded: Runtime) -> None:
    got = {c.address: c for c in figures(seeded).csms}
    alice, bob, carol = got[ALICE], got[BOB], got[CAROL]
    assert (alice.taken, bob.taken, carol.taken) == (2, 2, 1)  # Bob: one new, one escalated
    assert (alice.replies, bob.replies, carol.replies) == (3, 2, 0)  # #support is a reply too
    assert (alice.median_first_response_minutes, alice.p90_first_response_minutes) == (20, 30)
    assert bob.median_first_response_minutes == 20
    assert carol.median_first_response_minutes is None
    assert (carol.overdue, carol.reassigned_out, bob.reassigned_in) == (1, 1, 1)
    assert (alice.overdue, alice.reassigned_in, carol.reassigned_in) == (0, 0, 0)
    assert bob.to_support == 1


def test_accounts_touched_by_three_or_more_csms_are_flagged(seeded: Runtime) -> None:
    accounts = {a.account: a for a in figures(seeded).accounts}
    assert accounts["globex.com"].csms == [ALICE, BOB, CAROL]
    assert accounts["globex.com"].flagged
    assert accounts["initech.io"].csms == [ALICE]
    assert not accounts["initech.io"].flagged
    assert "umbrella.com" not in accounts  # next week


def test_report_json_gives_the_same_figures(
    seeded: Runtime, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_figures, "_runtime", lambda: seeded)
    assert cli_main(["report", "--since", "2026-11-16", "--until", "2026-11-23",
                     "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == figures(seeded).as_dict()
    alice = next(c for c in printed["csms"] if c["address"] == ALICE)
    assert (alice["taken"], alice["replies"], alice["reassigned_in"]) == (2, 3, 0)
    assert [a["account"] for a in printed["accounts"] if a["flagged"]] == ["globex.com"]
    assert cli_main(["report", "--since", "2026-11-16", "--until", "2026-11-23",
                     "--csv"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].startswith("kind,address,taken,replies,")
    assert any(r.startswith("account,") and "globex.com,3,yes" in r for r in rows)


def test_report_refuses_a_period_that_ends_before_it_starts(
    seeded: Runtime, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli_figures, "_runtime", lambda: seeded)
    assert cli_main(["report", "--since", "2026-11-23", "--until", "2026-11-16"]) == 1
    assert "--until must be after --since" in capsys.readouterr().err


def parts(mail: EmailMessage) -> tuple[str, str]:
    text = mail.get_body(("plain",))
    html = mail.get_body(("html",))
    assert text is not None and html is not None
    return str(text.get_content()), str(html.get_content())


def test_the_digest_shows_the_figures_as_text_and_html_with_a_chart(seeded: Runtime) -> None:
    mail = render_digest(seeded.settings, figures(seeded), "2026-W47")
    assert mail["To"] == "cs-lead@acme.com"
    assert mail["Subject"] == ("Customer Success weekly digest 2026-W47 (16 Nov - 22 Nov 2026): "
                               "4 new threads, 5 taken, 1 account(s) flagged")
    text, html = parts(mail)
    assert "threads taken 2, replies 3, first response median 20 min / p90 30 min" in text
    assert "went overdue 1, reassigned in 0 / out 1, handed to Support 0" in text
    assert "! globex.com: 3 CSMs (alice@acme.com, bob@acme.com, carol@acme.com)" in text
    assert "globex.com</strong>: 3 CSMs" in html
    # The chart: a PNG beside the HTML, which names it by Content-ID.
    (chart,) = [p for p in mail.walk() if p.get_content_type() == "image/png"]
    assert f'src="cid:{str(chart["Content-ID"]).strip("<>")}"' in html
    image = Image.open(io.BytesIO(chart.get_payload(decode=True)))
    assert image.size == (2 * (LABEL + BAR_WIDTH + 50), 2 * (3 * ROW + 4))  # three CSMs
    taken, replies = (31, 111, 235), (130, 80, 223)

    def colour_at(csm: int, offset: int, x: int) -> tuple[int, ...]:
        return tuple(image.getpixel((2 * x, 2 * (csm * ROW + offset + 6))))[:3]

    # Alice: 2 taken, 3 replies (the busiest figure: the full width); Carol: no replies.
    assert colour_at(0, 17, LABEL + BAR_WIDTH - 1) == replies
    assert colour_at(0, 3, LABEL + BAR_WIDTH * 2 // 3 - 2) == taken
    assert colour_at(0, 3, LABEL + BAR_WIDTH * 2 // 3 + 2) != taken
    assert colour_at(2, 17, LABEL + 1) != replies


def test_the_digest_is_due_monday_morning_in_the_leads_time_zone(rt: Runtime) -> None:
    sunday_night = datetime(2026, 11, 22, 23, 30, tzinfo=UTC).timestamp()  # Mon 00:30 Berlin
    assert due_week(rt.settings, sunday_night) is None  # Monday, but before eight
    monday = datetime(2026, 11, 23, 7, 0, tzinfo=UTC).timestamp()  # 08:00 in Berlin
    assert due_week(rt.settings, monday) == ("2026-W47", date(2026, 11, 16), DIGEST_MONDAY)
    thursday = datetime(2026, 11, 26, 12, 0, tzinfo=UTC).timestamp()
    assert due_week(rt.settings, thursday) == ("2026-W47", date(2026, 11, 16), DIGEST_MONDAY)



def test_the_digest_is_named_by_the_iso_week_it_covers(rt: Runtime) -> None:
    """Mon 30 Nov to Sun 6 Dec 2026 is 2026-W49, whatever Monday the digest goes out on;
    so is a week that spans a new year (Mon 28 Dec 2026 to Sun 3 Jan 2027 is 2026-W53)."""
    monday = datetime(2026, 12, 7, 9, 0, tzinfo=UTC).timestamp()
    assert due_week(rt.settings, monday) == ("2026-W49", date(2026, 11, 30), date(2026, 12, 7))
    new_year = datetime(2027, 1, 4, 9, 0, tzinfo=UTC).timestamp()
    assert due_week(rt.settings, new_year) == ("2026-W53", date(2026, 12, 28), date(2027, 1, 4))


def digests(rt: Runtime) -> list[str]:
    """The digests owed and not yet sent."""
    return [e.decode() for e in rt.redis.zrange("csm:outbox", 0, -1)
            if e.startswith(b"digest-")]


def test_no_digest_for_a_week_before_the_deployment_first_ran(seeded: Runtime) -> None:
    monday = datetime(2026, 11, 23, 7, 0, tzinfo=UTC).timestamp()
    seeded.redis.set("csm:started", monday + 3600)  # first started that Monday, later
    jobs.owe_digest(seeded, monday + 7200)
    assert digests(seeded) == []


def test_the_sweep_sends_the_digest_once(seeded: Runtime, smtp: RecordingSmtp) -> None:
    seeded.redis.set("csm:started", MONDAY - 86400)  # running since before the week
    jobs.configure(seeded)
    try:
        monday = datetime(2026, 11, 23, 7, 0, tzinfo=UTC).timestamp()
        for later in (0, 30, 3600):  # every sweep of the week asks again
            jobs.owe_digest(seeded, monday + later)
        (entry,) = digests(seeded)
        assert jobs.perform_one(entry).startswith("digest 2026-W47 sent")
        jobs.owe_digest(seeded, monday + 7200)
        assert digests(seeded) == []  # done: the same week is not owed again
    finally:
        jobs.configure(None)
    (sent,) = smtp.messages
    assert sent.rcpt_tos == ["cs-lead@acme.com"]
    mail = message_from_bytes(sent.message.as_bytes(), policy=policy.default)
    assert isinstance(mail, EmailMessage)
    assert mail.get_content_type() == "multipart/alternative"
    assert "threads taken 2, replies 3" in parts(mail)[0]


@pytest.mark.parametrize(("name", "shown"), [
    ("Carol Díaz", "Carol Diaz"), ("Zoë Brontë", "Zoe Bronte"), ("山田 太郎", "yamada@acme.com"),
    ("", "yamada@acme.com"),
])
def test_chart_labels_stay_in_the_fonts_characters(name: str, shown: str) -> None:
    (bar,) = bars(report.Report(date(2026, 11, 16), DIGEST_MONDAY,
                                [report.CsmFigures("yamada@acme.com", name)]))
    assert drawable(bar) == shown


def test_the_figures_count_the_leads_days(rt: Runtime) -> None:
    week = Week(rt)
    # Sunday 23:30 UTC is already Monday in Berlin, the lead's time zone.
    before = week.mail("Ann <ann@globex.com>", "Early", utc(2026, 11, 15, 23, 30))
    after = week.mail("Ben <ben@initech.io>", "Late", utc(2026, 11, 22, 23, 30))
    assert before.owner and after.owner
    (counted,) = [c for c in figures(rt).csms if c.taken]
    assert (counted.address, counted.taken) == (before.owner, 1)  # only the first
    assert [a.account for a in figures(rt).accounts] == ["globex.com"]


def utc(*parts: int) -> float:
    return datetime(*parts, tzinfo=UTC).timestamp()  # type: ignore[misc]
