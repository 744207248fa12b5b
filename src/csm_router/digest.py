"""The weekly digest to the CS lead: the report of the last seven days, as HTML with a
bar chart per CSM and a plain-text alternative, sent once each Monday morning in the
lead's time zone by whichever worker runs the sweep."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from zoneinfo import ZoneInfo

from csm_router.config import Address, Settings
from csm_router.outbound import message_id_for, render, stamp
from csm_router.report import Report

SEND_FROM_HOUR = 8  # Monday, in the lead's time zone
BAR_WIDTH = 240  # pixels for the longest bar


def lead(settings: Settings) -> Address | None:
    """Who gets the digest: ROUTER_DIGEST_ADDRESS, else ROUTER_OVERFLOW_ADDRESS."""
    return settings.digest_address or settings.overflow_address


def lead_zone(settings: Settings) -> ZoneInfo:
    """The lead's time zone: their ROUTER_HOURS entry, if they have one; UTC otherwise."""
    address = lead(settings)
    shift = settings.hours.get(address.address) if address else None
    return shift.zone if shift else ZoneInfo("UTC")


def due_week(settings: Settings, now: float) -> tuple[str, date, date] | None:
    """The digest due at `now`, as (ISO week, since, until), or None before Monday's hour.

    It covers the seven days before this Monday; asked again later that week, it names
    the same week, which is owed once.
    """
    if lead(settings) is None:
        return None
    local = datetime.fromtimestamp(now, lead_zone(settings))
    monday = local.date() - timedelta(days=local.weekday())
    if local.date() == monday and local.hour < SEND_FROM_HOUR:
        return None
    year, week, _ = monday.isocalendar()
    return f"{year}-W{week:02d}", monday - timedelta(days=7), monday


@dataclass(frozen=True)
class Bar:
    """One CSM's bars: threads taken and replies, scaled to the busiest."""

    label: str
    taken: int
    replies: int
    taken_width: int
    replies_width: int


def bars(report: Report) -> list[Bar]:
    top = max([1, *(max(c.taken, c.replies) for c in report.csms)])
    return [Bar(c.name or c.address, c.taken, c.replies, round(BAR_WIDTH * c.taken / top),
                round(BAR_WIDTH * c.replies / top)) for c in report.csms]


def render_digest(settings: Settings, report: Report, week: str) -> EmailMessage:
    """The digest mail: multipart/alternative, plain text first."""
    to = lead(settings)
    assert to is not None
    last = report.until - timedelta(days=1)
    subject = (f"Customer Success weekly digest {report.since:%d %b} - {last:%d %b %Y}: "
               f"{sum(c.taken for c in report.csms)} threads taken, "
               f"{len(report.flagged)} account(s) flagged")
    out = stamp(sender=settings.alias.name or settings.alias.address, alias=settings.alias,
                to=str(to), subject=subject, kind="digest",
                message_id=message_id_for("digest", week, domain=settings.alias.domain))
    out["Auto-Submitted"] = "auto-generated"
    context = {"report": report, "last": last, "bars": bars(report), "week": week,
               "bar_width": BAR_WIDTH, "generated": datetime.now(UTC)}
    out.set_content(render("digest.txt.j2", **context))
    out.add_alternative(render("digest.html.j2", **context), subtype="html")
    return out
