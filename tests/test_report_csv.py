"""`report --csv`: customer text that begins like a spreadsheet formula stays text."""

from __future__ import annotations

import csv
import io
import time
from datetime import date, datetime, timedelta

import fakeredis
import pytest

from csm_router.config import load_settings
from csm_router.core.decide import decide
from csm_router.core.message import parse
from csm_router.lead import report
from csm_router.runtime import Runtime
from csm_router.state.store import message_key


def test_formula_like_accounts_are_neutralised_and_numbers_left_alone() -> None:
    settings = load_settings(alias="Acme CS <success@acme.com>", pool="alice@acme.com",
                             away="", max_open_per_csm=0)
    rt = Runtime.from_settings(settings, fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    rt.store.ensure_sequence()
    now = time.time()
    # An account is what follows the @ (an address with a second @ is no address at all).
    senders = ["Eve <eve@=1+1>", "x@+cmd", "y@-2+3", "w@globex.com"]
    for n, sender in enumerate(senders):
        raw = (f"From: {sender}\r\nTo: success@acme.com\r\nSubject: Q{n}\r\n"
               f"Message-ID: <q{n}@c.com>\r\n\r\nHello\r\n").encode()
        msg = parse(raw)
        rt.store.record(message_key(msg, raw), msg, decide(msg, rt.store.snapshot(msg, now)),
                        now, raw=raw)
    today = datetime.fromtimestamp(now, settings.report_zone).date()
    rows = list(csv.DictReader(io.StringIO(
        report.build(rt.store, today, today + timedelta(days=1)).csv())))
    accounts = {r["account"] for r in rows if r["kind"] == "account"}
    assert accounts == {"'=1+1", "'+cmd", "'-2+3", "globex.com"}
    alice = next(r for r in rows if r["kind"] == "csm")
    assert alice["taken"] == "4"


@pytest.mark.parametrize(("cell", "shown"), [
    ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"),
    ("\tcmd", "'\tcmd"),
    ("\rcmd", "'\rcmd"),
    ("-", "'-"),
    ("@SUM(A1)", "'@SUM(A1)"),
    ("a=1", "a=1"),
    ("", ""),
    (-3, -3),  # a number is a number, even below zero
    (1.5, 1.5),
])
def test_inert_prefixes_only_text_that_begins_like_a_formula(cell: object, shown: object) -> None:
    assert report.inert(cell) == shown


def test_an_empty_report_still_has_its_header_row() -> None:
    empty = report.Report(date(2026, 11, 16), date(2026, 11, 23), [], [])
    assert empty.csv().splitlines()[0].startswith("kind,")


def test_the_csv_carries_the_pools_figures_and_who_left_the_pool() -> None:
    figures = report.Report(
        date(2026, 11, 30), date(2026, 12, 7),
        [report.CsmFigures("alice@acme.com", taken=2, overdue=1),
         report.CsmFigures("carol@acme.com", taken=1, in_pool=False,
                           median_first_response_seconds=13.0,
                           median_first_response_minutes=0.22)],
        [], report.Intake(came_in=4, came_in_held=1, straight_to_support=1, to_support=2))
    rows = list(csv.DictReader(io.StringIO(figures.csv())))
    csms = {r["address"]: r for r in rows if r["kind"] == "csm"}
    assert (csms["alice@acme.com"]["in_pool"], csms["carol@acme.com"]["in_pool"]) == ("yes", "no")
    assert csms["alice@acme.com"]["went_overdue"] == csms["alice@acme.com"]["overdue"] == "1"
    assert csms["carol@acme.com"]["median_first_response_seconds"] == "13.0"
    pool = {r["figure"]: int(r["value"]) for r in rows if r["kind"] == "threads"}
    assert pool["came_in"] == 4 and pool["came_in_to_csm"] == 2
    assert pool["straight_to_support"] == 1 and pool["to_support"] == 2
