"""The weekly digest to the CS lead: the report of the last seven days, as HTML with a
bar chart per CSM (a PNG, drawn with Pillow) and a plain-text alternative, sent once each
Monday morning in the lead's time zone by whichever worker runs the sweep."""

from __future__ import annotations

import base64
import io
import re
import time
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from csm_router.config import Settings
from csm_router.config.teams import current_team
from csm_router.lead import report
from csm_router.lead.report import Report
from csm_router.lead.statuspage import duration, span
from csm_router.mail.outbound import message_id_for, render, stamp, when
from csm_router.state.pool import PoolError
from csm_router.state.store import Store

SEND_FROM_HOUR = 8  # Monday, in the lead's time zone
BAR_WIDTH = 240  # pixels for the longest bar


def due_week(settings: Settings, now: float) -> tuple[str, date, date] | None:
    """The digest due at `now`, as (ISO week, since, until), or None before Monday's hour.

    It covers the seven days before this Monday; asked again later that week, it names
    the same week, which is owed once.
    """
    if settings.lead is None:
        return None
    local = datetime.fromtimestamp(now, settings.report_zone)
    if local.weekday() == 0 and local.hour < SEND_FROM_HOUR:
        return None
    return last_complete_week(settings, now)


def last_complete_week(settings: Settings, now: float) -> tuple[str, date, date]:
    """The last ISO week that has ended at `now` in the lead's zone, as (label, since,
    until): the one this or next Monday's digest covers."""
    local = datetime.fromtimestamp(now, settings.report_zone).date()
    since = local - timedelta(days=local.weekday() + 7)
    # Named by the week it covers (Mon 30 Nov - Sun 6 Dec 2026 is 2026-W49), not by the
    # Monday it goes out on.
    return week_label(since), since, since + timedelta(days=7)


def week_label(monday: date) -> str:
    year, week, _ = monday.isocalendar()
    return f"{year}-W{week:02d}"


_WEEK = re.compile(r"(\d{4})-W(\d{2})")


def parse_week(label: str) -> tuple[date, date]:
    """The days [since, until) of an ISO week such as 2026-W49; PoolError if it is none."""
    found = _WEEK.fullmatch(label.strip())
    try:
        if found is None:
            raise ValueError(label)
        since = date.fromisocalendar(int(found[1]), int(found[2]), 1)
    except ValueError:
        raise PoolError(f"--week {label!r}: give an ISO week such as 2026-W49") from None
    return since, since + timedelta(days=7)


@dataclass(frozen=True)
class Bar:
    """One CSM's bars: threads taken and replies, scaled to the busiest."""

    label: str
    address: str
    taken: int
    replies: int
    taken_width: int
    replies_width: int


def bars(report: Report) -> list[Bar]:
    top = max([1, *(max(c.taken, c.replies) for c in report.csms)])
    return [Bar(c.name or c.address, c.address, c.taken, c.replies,
                round(BAR_WIDTH * c.taken / top),
                round(BAR_WIDTH * c.replies / top)) for c in report.csms]


ROW = 34  # pixels per CSM in the chart
LABEL = 170  # pixels for the names left of the bars
TAKEN, REPLIES, INK, GREY = "#1f6feb", "#8250df", "#1f2328", "#59636e"


def chart_png(rows: list[Bar]) -> bytes:
    """The bar chart as a PNG: mail clients that show no SVG (Gmail, Outlook) show it.

    Drawn at twice its size, for sharp text on high-density screens.
    """
    scale = 2
    width, height = LABEL + BAR_WIDTH + 50, len(rows) * ROW + 4
    image = Image.new("RGB", (width * scale, height * scale), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12 * scale)
    small = ImageFont.load_default(size=11 * scale)
    for n, bar in enumerate(rows):
        top = n * ROW
        draw.text((0, (top + 3) * scale), drawable(bar)[:26], fill=INK, font=font)
        for offset, value, length, colour in ((3, bar.taken, bar.taken_width, TAKEN),
                                              (17, bar.replies, bar.replies_width, REPLIES)):
            y = top + offset
            if length:
                draw.rectangle([LABEL * scale, y * scale, (LABEL + length) * scale - 1,
                                (y + 12) * scale - 1], fill=colour)
            draw.text(((LABEL + length + 6) * scale, (y - 1) * scale), str(value), fill=GREY,
                      font=small)
    out = io.BytesIO()
    image.save(out, "PNG", optimize=True)
    return out.getvalue()


def drawable(bar: Bar) -> str:
    """The label in the characters the built-in font has: accents dropped (Díaz, Diaz);
    the address for a name in another script."""
    if all(ord(c) < 128 or unicodedata.decomposition(c) for c in bar.label):
        return unicodedata.normalize("NFKD", bar.label).encode("ascii", "ignore").decode()
    return bar.address


def render_digest(settings: Settings, report: Report, week: str) -> EmailMessage:
    """The digest mail: multipart/alternative, plain text first; the HTML carries its
    chart as a related PNG."""
    to = settings.lead
    assert to is not None
    last = report.until - timedelta(days=1)
    team = current_team()
    named = f" (team {team})" if team else ""
    subject = (f"Customer Success weekly digest{named} {week} ({report.since:%d %b} - "
               f"{last:%d %b %Y}): {report.threads.came_in} new threads, "
               f"{sum(c.taken for c in report.csms)} taken, "
               f"{len(report.flagged)} account(s) flagged")
    out = stamp(sender=settings.alias.name or settings.alias.address, alias=settings.alias,
                to=str(to), subject=subject, kind="digest",
                message_id=message_id_for("digest", week, *([team] if team else []),
                                          domain=settings.alias.domain))
    out["Auto-Submitted"] = "auto-generated"
    rows = bars(report)
    chart = make_msgid("chart", domain=settings.alias.domain)
    zone = settings.report_zone
    context = {"report": report, "last": last, "bars": rows, "week": week,
               "zone": zone.key, "span": span, "duration": duration,
               "chart_cid": chart[1:-1], "chart_width": LABEL + BAR_WIDTH + 50,
               "chart_height": len(rows) * ROW + 4, "generated": when(time.time(), zone)}
    out.set_content(render("digest.txt.j2", **context))
    out.add_alternative(render("digest.html.j2", **context), subtype="html")
    html = next(p for p in out.iter_parts() if p.get_content_type() == "text/html")
    assert isinstance(html, EmailMessage)
    html.add_related(chart_png(rows), "image", "png", cid=chart, filename="chart.png")
    return out


def compose(store: Store, week: str, since: date, until: date) -> EmailMessage:
    """The digest of [since, until) as the worker sends it."""
    return render_digest(store.settings, report.build(store, since, until), week)


def write_preview(store: Store, week: str | None, folder: Path) -> list[Path]:
    """Write the digest of `week` (default: the last complete ISO week in the lead's zone)
    to `folder`, as it would go out: `csm-digest-<week>.eml`, the whole message, and
    `csm-digest-<week>.html`, its HTML with the chart inlined for a browser (a team's
    named `csm-digest-<team>-<week>`). Answers the paths. PoolError for a malformed week
    or no lead to address it to."""
    if store.settings.lead is None:
        raise PoolError("no lead to address the digest to: set ROUTER_DIGEST_ADDRESS or "
                        "ROUTER_OVERFLOW_ADDRESS")
    if week is None:
        week, since, until = last_complete_week(store.settings, time.time())
    else:
        since, until = parse_week(week)
        week = week_label(since)
    mail = compose(store, week, since, until)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"csm-digest-{current_team()}-{week}" if current_team() else f"csm-digest-{week}"
    eml = folder / f"{name}.eml"
    eml.write_bytes(mail.as_bytes(policy=mail.policy.clone(linesep="\r\n")))
    page = folder / f"{name}.html"
    page.write_text(inline_chart(mail), encoding="utf-8")
    return [eml, page]


def inline_chart(mail: EmailMessage) -> str:
    """The digest's HTML with its chart as a data: URI instead of a cid: reference."""
    html = mail.get_body(("html",))
    assert isinstance(html, EmailMessage)
    page = str(html.get_content())
    for part in mail.walk():
        if part.get_content_type() == "image/png" and part["Content-ID"]:
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            uri = "data:image/png;base64," + base64.b64encode(payload).decode("ascii")
            page = page.replace(f"cid:{str(part['Content-ID']).strip('<>')}", uri)
    return page
