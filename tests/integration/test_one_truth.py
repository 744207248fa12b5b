"""The lead's figures tell one truth, on the real servers: a day of real mail through the
real router and worker (escalated with nobody available, a colleague taking a thread over
by replying, a CSM leaving the pool, a thread straight to Support, free-mail customers,
sub-minute answers), then `status --json`, `report --json`, the digest preview and
/metrics from a real `csm-router web`: every figure shown in two places is equal.

`figures_everywhere` collects each place's figures under one naming; a new place (the
status page, say) adds its own collector to it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from test_processes import start, stop
from test_web import get, scrape, until

from csm_router.demo.relay import Received
from csm_router.lead.statuspage import span
from support.product import ALICE, BOB, CAROL, Product
from support.servers import free_ports

pytestmark = pytest.mark.integration

ZONE = ZoneInfo("Europe/Berlin")  # the lead's, by their ROUTER_HOURS
SMALLER_POOL = "Alice Smith <alice@acme.com>*2, Bob Jones <bob@acme.com>"
TECHNICAL = ("Hi,\n\nsince this morning the API returns 500 errors on every call:\n\n"
             "Traceback (most recent call last):\n  File \"sync.py\", line 12, in <module>\n"
             "requests.exceptions.HTTPError: 500 Server Error\n\nThis blocks our nightly sync.\n")

# A figure's name: what, and whom it is about (a CSM, an account, "" for the pool).
Key = tuple[str, str]
Figures = dict[Key, Any]


def duration(seconds: float | None) -> str:
    return "-" if seconds is None else span(seconds)


def from_status(product: Product) -> Figures:
    shown = json.loads(product.cli("status", "--json").stdout)
    found: Figures = {("held", ""): shown["held"], ("overdue_now", ""): shown["overdue_now"],
                      ("held_overdue", ""): shown["held_overdue"]}
    for r in shown["pool"]:
        csm = r["address"]
        found |= {("taken", csm): r["taken_today"], ("open", csm): r["open"],
                  ("overdue_now", csm): r["overdue_now"],
                  ("median_first_response", csm): duration(r["median_first_response_seconds"]),
                  ("p90_first_response", csm): duration(r["p90_first_response_seconds"])}
    return found


def from_report(product: Product, day: date) -> Figures:
    shown = json.loads(product.cli("report", "--since", day.isoformat(), "--until",
                                   (day + timedelta(days=1)).isoformat(), "--json").stdout)
    assert shown["zone"] == "Europe/Berlin"
    found: Figures = {("threads:" + k, ""): v for k, v in shown["threads"].items()}
    for c in shown["csms"]:
        csm = c["address"]
        found |= {(what, csm): c[what] for what in ("taken", "replies", "went_overdue",
                                                   "reassigned_in", "reassigned_out",
                                                   "to_support", "in_pool")}
        found |= {("median_first_response", csm): duration(c["median_first_response_seconds"]),
                  ("p90_first_response", csm): duration(c["p90_first_response_seconds"])}
    found |= {("touched_by", a["account"]): a["touched_by"] for a in shown["accounts"]}
    return found


_CSM = re.compile(r"^  (?:.* <)?(?P<csm>[^\s<>]+@[^\s<>]+?)>?(?P<gone> \(no longer in the "
                  r"pool\))?\n    threads taken (?P<taken>\d+), replies (?P<replies>\d+), first "
                  r"response median (?P<median>.+?) / p90 (?P<p90>.+?)\n    went overdue "
                  r"(?P<went_overdue>\d+), reassigned in (?P<reassigned_in>\d+) / out "
                  r"(?P<reassigned_out>\d+), handed to Support (?P<to_support>\d+)$", re.M)


def from_digest(product: Product, week: str, folder: Path) -> Figures:
    """The figures of the digest preview's plain text: what the lead reads."""
    printed = product.cli("digest", "--preview", "--week", week, "--output", str(folder))
    eml = Path(printed.stdout.split()[0])
    assert eml.name == f"csm-digest-{week}.eml"
    mail = message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert isinstance(mail, EmailMessage) and week in str(mail["Subject"])
    plain = mail.get_body(("plain",))
    assert plain is not None
    text = str(plain.get_content()).replace("\r\n", "\n")
    found: Figures = {}
    for m in _CSM.finditer(text):
        csm = m["csm"]
        found |= {(what, csm): int(m[what]) for what in ("taken", "replies", "went_overdue",
                                                        "reassigned_in", "reassigned_out",
                                                        "to_support")}
        found |= {("in_pool", csm): m["gone"] is None,
                  ("median_first_response", csm): m["median"],
                  ("p90_first_response", csm): m["p90"]}
    threads = re.search(r"came in: (\d+) \(to a CSM at once (\d+), held for a free CSM (\d+), "
                        r"straight to Support (\d+)\)\n  to Support: (\d+), of which straight "
                        r"from the customer (\d+)\n  went overdue \(escalated\): (\d+), of "
                        r"which held with nobody available (\d+)", text)
    assert threads is not None, text
    names = ("came_in", "came_in_to_csm", "came_in_held", "straight_to_support", "to_support",
             "straight_to_support", "went_overdue", "went_overdue_held")
    found |= {("threads:" + n, ""): int(v) for n, v in zip(names, threads.groups(), strict=True)}
    listed = text.partition("Accounts and how many CSMs touched each\n")[2]
    found |= {("touched_by", a): int(n) for a, n in re.findall(r"^  (\S+): (\d+)$", listed,
                                                               re.M)}
    return found


def from_metrics(base: str) -> Figures:
    got = scrape(base)
    found: Figures = {("held", ""): got["csm_router_held_threads"][()],
                      ("held_overdue", ""): got["csm_router_held_overdue_threads"][()]}
    for name, what in (("csm_router_threads_taken_today", "taken"),
                       ("csm_router_open_threads", "open"),
                       ("csm_router_overdue_threads", "overdue_now")):
        found |= {(what, dict(labels)["csm"]): int(v) for labels, v in got[name].items()}
    return found


_ROW = re.compile(r'<tr data-csm="(?P<csm>[^"]+)">(?P<cells>.*?)</tr>', re.S)
_FIGURE = re.compile(r'data-figure="(?P<what>\w+)">(?P<value>\d+)<')


def from_page(base: str) -> Figures:
    """The status page's figures, as the lead's browser gets them."""
    status, html = get(base + "/")
    assert status == 200, html
    top = html.partition("<h2>")[0]
    found: Figures = {(m["what"], ""): int(m["value"]) for m in _FIGURE.finditer(top)}
    for row in _ROW.finditer(html):
        found |= {(m["what"], row["csm"]): int(m["value"])
                  for m in _FIGURE.finditer(row["cells"])}
    return found


def figures_everywhere(collectors: dict[str, Callable[[], Figures]]) -> dict[str, Figures]:
    """Each place's figures, by place."""
    return {place: collect() for place, collect in collectors.items()}


def disagreements(places: dict[str, Figures]) -> list[str]:
    """Every figure two places show with different values."""
    found = []
    names = list(places)
    for i, one in enumerate(names):
        for other in names[i + 1:]:
            for figure in places[one].keys() & places[other].keys():
                if places[one][figure] != places[other][figure]:
                    found.append(f"{figure}: {one} {places[one][figure]!r}, "
                                 f"{other} {places[other][figure]!r}")
    return found


@pytest.fixture
def lead(product: Product) -> Product:
    product.env.update(ROUTER_SUPPORT_ADDRESS="Acme Support <support@acme.com>",
                       ROUTER_HOURS="cs-lead@acme.com=Europe/Berlin 09-17 Mon-Fri",
                       ROUTER_FIRST_RESPONSE_MINUTES="1")
    return product


def forwards(sent: list[Received]) -> dict[str, tuple[str, str]]:
    """Customer -> (thread reference, CSM) of each forward."""
    found = {}
    for r in sent:
        ref = re.search(r"\[(CS-\d+)\]", str(r.message["Subject"]))
        customer = r.message["Reply-To"].addresses[0].addr_spec if r.message["Reply-To"] else ""
        if ref and r.rcpt_tos[0] in (ALICE, BOB, CAROL) and customer:
            found[customer] = (ref[1], r.rcpt_tos[0])
    return found


@pytest.fixture
def web(lead: Product) -> Iterator[Callable[[], str]]:
    """Starts `csm-router web` when asked (after the pool has changed); answers its URL."""
    procs = []

    def begin() -> str:
        (port,) = free_ports(1)
        lead.env["ROUTER_WEB_ADDRESS"] = f"127.0.0.1:{port}"
        procs.append(start(lead, "web", log="web.log"))
        base = f"http://127.0.0.1:{port}"
        until(lambda: get(base + "/healthz")[0] in (200, 503), "web to listen",
              (lead.workdir / "web.log").read_text)
        return base

    yield begin
    for proc in procs:
        assert stop(proc) == 0


def test_page_status_report_digest_and_metrics_agree_on_a_real_day(
    lead: Product, web: Callable[[], str], tmp_path: Path
) -> None:
    day = datetime.now(ZONE).date()
    year, number, _ = day.isocalendar()
    week = f"{year}-W{number:02d}"
    # Free-mail customers (each an account of their own), a company, a technical request.
    for name in ("ann", "ben", "cid"):
        lead.write(f"{name.title()} <{name}@gmail.com>", f"Question from {name}")
    lead.write("Ida <ida@initech.io>", "API down?", TECHNICAL)
    lead.write("Dan <dan@globex.com>", "Quarterly review")
    owners = forwards(lead.route())
    assert {c: o for c, (_, o) in owners.items()} == {
        "ann@gmail.com": ALICE, "ben@gmail.com": BOB, "cid@gmail.com": CAROL,
        "dan@globex.com": ALICE}
    assert "ida@initech.io" not in owners  # straight to Support

    # Bob takes Ann's thread over by answering her; Bob and Carol answer their own: all
    # within seconds of the forward.
    for csm, customer in ((BOB, "ann@gmail.com"), (BOB, "ben@gmail.com"),
                          (CAROL, "cid@gmail.com")):
        ref, _ = owners[customer]
        lead.staff_writes(f"CSM <{csm}>", f"Re: [{ref}] Question", "Hi, here is how.\n",
                          to=customer, cc=lead.alias)
    lead.route()

    # Dan's thread goes unanswered while the whole team is away: overdue, held.
    for csm in (ALICE, BOB, CAROL):
        lead.cli("away", csm)
    later = (datetime.now(UTC) + timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%S")
    assert "1 held" in lead.cli("sweep", "--at", later).stdout

    # Carol leaves the pool; a new customer finds nobody available either.
    lead.env["ROUTER_POOL"] = SMALLER_POOL
    lead.write("Eve <eve@gmail.com>", "Anyone there?")
    lead.route()

    base = web()
    places = figures_everywhere({
        "status": lambda: from_status(lead),
        "report": lambda: from_report(lead, day),
        "digest": lambda: from_digest(lead, week, tmp_path / "digest"),
        "metrics": lambda: from_metrics(base),
        "page": lambda: from_page(base),
    })
    assert disagreements(places) == []

    report = places["report"]
    assert {k: report[("threads:" + k, "")] for k in (
        "came_in", "came_in_to_csm", "came_in_held", "straight_to_support", "to_support",
        "went_overdue", "went_overdue_held")} == {
        "came_in": 6, "came_in_to_csm": 4, "came_in_held": 1, "straight_to_support": 1,
        "to_support": 1, "went_overdue": 1, "went_overdue_held": 1}
    assert [report[("taken", c)] for c in (ALICE, BOB, CAROL)] == [2, 2, 1]
    assert report[("in_pool", CAROL)] is False and places["digest"][("in_pool", CAROL)] is False
    assert ("taken", CAROL) not in places["status"]  # no longer in the pool
    assert report[("went_overdue", ALICE)] == 1
    assert re.fullmatch(r"\d+ s", report[("median_first_response", CAROL)])  # sub-minute
    assert {a: n for (what, a), n in report.items() if what == "touched_by"} == {
        "ann@gmail.com": 2, "ben@gmail.com": 1, "cid@gmail.com": 1, "globex.com": 1}
    assert places["status"][("held", "")] == 2
    # Dan's thread, held past its target, stays overdue now until someone answers it.
    assert places["status"][("held_overdue", "")] == 1
    assert places["page"][("overdue_now", "")] == places["status"][("overdue_now", "")] == 1
    assert ("taken", BOB) in places["page"] and ("open", ALICE) in places["page"]
    # Everything a figure was compared on was really there in more than one place.
    assert ("taken", BOB) in places["metrics"] and ("taken", BOB) in places["digest"]
    assert ("threads:came_in", "") in places["digest"]
