"""Working hours: shifts across time zones and DST changes, and deadlines in working time."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from csm_router.config import ConfigError, load_settings
from csm_router.core.hours import HoursError, Schedule, parse_days, parse_hours, parse_shift

ALICE, BOB = "alice@acme.com", "bob@acme.com"
BERLIN = f"{ALICE}=Europe/Berlin 09-17 Mon-Fri"
NEW_YORK = f"{BOB}=America/New_York 09-18 Mon-Fri"


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M")


def schedule(hours: str, pool: tuple[str, ...] = (ALICE, BOB)) -> Schedule:
    return Schedule(parse_hours(hours), pool)


def test_a_shift_keeps_local_hours_across_the_spring_dst_change() -> None:
    berlin = schedule(BERLIN, (ALICE,))
    # Friday before the change (CET, UTC+1): 09:00 local is 08:00 UTC.
    assert not berlin.on_shift(ALICE, utc("2026-03-27 07:30"))
    assert berlin.on_shift(ALICE, utc("2026-03-27 08:00"))
    # Monday after it (CEST, UTC+2): 09:00 local is 07:00 UTC.
    assert berlin.on_shift(ALICE, utc("2026-03-30 07:30"))
    assert not berlin.on_shift(ALICE, utc("2026-03-30 15:00"))  # 17:00 local: gone home
    assert not berlin.on_shift(ALICE, utc("2026-03-28 10:00"))  # Saturday


def test_a_mail_at_23_00_is_not_overdue_at_midnight() -> None:
    berlin = schedule(BERLIN, (ALICE,))
    friday_night = utc("2026-11-27 22:00")  # 23:00 in Berlin
    due = berlin.deadline(friday_night, 60)
    assert iso(due) == "2026-11-30 09:00"  # Monday 10:00 in Berlin
    assert berlin.working_seconds(friday_night, utc("2026-11-27 23:00")) == 0


def test_the_clock_runs_across_dst_in_local_working_hours() -> None:
    new_york = schedule(NEW_YORK, (BOB,))
    # Friday 30 October 17:30 EDT; the US leaves DST on Sunday 1 November.
    due = new_york.deadline(utc("2026-10-30 21:30"), 60)
    assert iso(due) == "2026-11-02 14:30"  # Monday 09:30 EST: 30 minutes each side


def test_an_eu_and_us_pool_follows_the_sun() -> None:
    pool = schedule(f"{BERLIN}; {NEW_YORK}")
    at = utc("2026-11-27 15:30")  # 16:30 in Berlin, 10:30 in New York
    assert pool.off_shift(at) == frozenset()
    assert iso(pool.deadline(at, 60)) == "2026-11-27 16:30"  # no gap between the two
    evening = utc("2026-11-27 20:00")  # Berlin gone, New York on until 23:00 UTC
    assert pool.off_shift(evening) == {ALICE}
    assert iso(pool.back_at(ALICE, evening) or 0) == "2026-11-30 08:00"
    assert pool.off_shift(utc("2026-11-28 12:00")) == {ALICE, BOB}  # Saturday


def test_without_hours_for_someone_the_clock_is_the_wall_clock() -> None:
    partly = schedule(BERLIN)  # Bob has no hours: always on shift
    at = utc("2026-11-28 12:00")
    assert partly.off_shift(at) == {ALICE}
    assert partly.deadline(at, 60) == at + 3600


def test_a_night_shift_runs_past_midnight() -> None:
    night = schedule(f"{ALICE}=UTC 22-06 Mon-Fri", (ALICE,))
    assert night.on_shift(ALICE, utc("2026-11-24 23:00"))  # Tuesday night
    assert night.on_shift(ALICE, utc("2026-11-25 05:59"))  # into Wednesday
    assert not night.on_shift(ALICE, utc("2026-11-25 06:00"))
    assert night.on_shift(ALICE, utc("2026-11-28 05:00"))  # Friday's shift, on Saturday
    assert not night.on_shift(ALICE, utc("2026-11-28 23:00"))  # no Saturday shift


@pytest.mark.parametrize(("text", "days"), [
    ("Mon-Fri", {0, 1, 2, 3, 4}), ("Sat,Sun", {5, 6}), ("Fri-Mon", {4, 5, 6, 0}),
    ("mon-wed,fri", {0, 1, 2, 4}), ("Tuesday", {1}),
])
def test_days(text: str, days: set[int]) -> None:
    assert parse_days(text) == days


def test_hours_may_give_minutes_and_every_day_by_default() -> None:
    shift = parse_shift("Asia/Tokyo 09:30-18:15")
    assert shift.describe() == "09:30-18:15 Mon, Tue, Wed, Thu, Fri, Sat, Sun (Asia/Tokyo)"


@pytest.mark.parametrize(("text", "says"), [
    ("alice@acme.com=Mars/Olympus 09-17", "'Mars/Olympus' is not a time zone"),
    ("alice@acme.com=UTC 9am-5pm", "'9am-5pm' is not hours"),
    ("alice@acme.com=UTC 09-25", "'09-25' is not hours"),
    ("alice@acme.com=UTC 09-09", "starts when it ends"),
    ("alice@acme.com=UTC 09-17 Mon-Fry", "'Mon-Fry' is not days"),
    ("alice@acme.com UTC 09-17", "is not address=Time/Zone"),
    ("alice@acme.com=UTC 09-17; alice@acme.com=UTC 10-18", "has hours twice"),
])
def test_a_wrong_entry_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(HoursError, match=says):
        parse_hours(text)


def test_settings_refuse_hours_for_someone_outside_the_pool() -> None:
    with pytest.raises(ConfigError, match=r"ROUTER_HOURS: carol@acme\.com not in ROUTER_POOL"):
        load_settings(alias="success@acme.com", pool=ALICE,
                      hours="carol@acme.com=UTC 09-17")
    with pytest.raises(ConfigError, match=r"ROUTER_HOURS: .*not a time zone"):
        load_settings(alias="success@acme.com", pool=ALICE, hours=f"{ALICE}=Nowhere 09-17")
    lead = load_settings(alias="success@acme.com", pool=ALICE, overflow_address="lead@acme.com",
                         hours="lead@acme.com=Europe/Berlin 08-16")
    assert "lead@acme.com" in lead.hours  # the lead's time zone, for the digest


def test_settings_refuse_a_premium_pool_outside_the_pool_or_without_accounts() -> None:
    with pytest.raises(ConfigError, match=r"ROUTER_PREMIUM_POOL: carol@acme\.com not in"):
        load_settings(alias="success@acme.com", pool=ALICE, premium="initech.com",
                      premium_pool="carol@acme.com")
    with pytest.raises(ConfigError, match="ROUTER_PREMIUM_POOL: is set but ROUTER_PREMIUM"):
        load_settings(alias="success@acme.com", pool=ALICE, premium_pool=ALICE)
    with pytest.raises(ConfigError, match=r"ROUTER_PREMIUM: .https://initech\.com. is not"):
        load_settings(alias="success@acme.com", pool=ALICE, premium="https://initech.com")


# Public holidays ---------------------------------------------------------------------------

BERLIN_HOLIDAYS = f"{ALICE}=Europe/Berlin 09-17 Mon-Fri holidays=DE-BE"


def test_a_holiday_calendar_is_named_in_the_hours_and_read_from_the_package() -> None:
    settings = load_settings(alias="success@acme.com", hours=BERLIN_HOLIDAYS, pool=ALICE)
    shift = settings.hours[ALICE]
    assert shift.calendar == "DE-BE"
    assert shift.describe() == "09:00-17:00 Mon, Tue, Wed, Thu, Fri (Europe/Berlin, holidays DE-BE)"
    labour_day = datetime(2026, 5, 1).date()  # a Friday
    womens_day = datetime(2027, 3, 8).date()  # a Monday, a holiday in Berlin only
    assert labour_day in shift.days_off and womens_day in shift.days_off
    munich = load_settings(alias="success@acme.com", pool=ALICE,
                           hours=f"{ALICE}=Europe/Berlin 09-17 Mon-Fri holidays=de-by")
    bavaria = munich.hours[ALICE]
    assert bavaria.calendar == "DE-BY" and womens_day not in bavaria.days_off


def test_a_holiday_is_off_like_a_weekend_for_shifts_and_deadlines() -> None:
    settings = load_settings(alias="success@acme.com", hours=BERLIN_HOLIDAYS, pool=ALICE)
    berlin = settings.schedule
    assert berlin.on_shift(ALICE, utc("2026-04-30 10:00"))  # Thursday
    assert not berlin.on_shift(ALICE, utc("2026-05-01 10:00"))  # Labour Day, a Friday
    assert berlin.back_at(ALICE, utc("2026-05-01 10:00")) == utc("2026-05-04 07:00")
    # An hour's target from Thursday 16:30 Berlin: half an hour then, half on Monday.
    assert iso(berlin.deadline(utc("2026-04-30 14:30"), 60)) == "2026-05-04 07:30"
    assert berlin.working_seconds(utc("2026-04-30 00:00"), utc("2026-05-04 00:00")) == 8 * 3600
    # The report's first-response figures: asked Thursday 16:00 Berlin, answered Monday
    # 10:00 after the long weekend: two working hours, the holiday counting as none.
    span = f"{utc('2026-04-30 14:00')}:{utc('2026-05-04 08:00')}"
    assert berlin.response_seconds(span) == 2 * 3600
    plain = schedule(BERLIN, (ALICE,))
    assert plain.on_shift(ALICE, utc("2026-05-01 10:00"))  # no calendar: a working day


@pytest.mark.parametrize(("calendar", "said"), [
    ("holidays=ZZ", "ZZ is no country"),
    ("holidays=DE-XX", "XX is no subdivision of DE"),
    ("holidays=", "is not a holiday calendar"),
    ("holidays:DE", "is not a holiday calendar"),
])
def test_an_unknown_holiday_calendar_is_refused_by_name(calendar: str, said: str) -> None:
    with pytest.raises(ConfigError, match="ROUTER_HOURS") as caught:
        load_settings(alias="success@acme.com", pool=ALICE,
                      hours=f"{ALICE}=Europe/Berlin 09-17 Mon-Fri {calendar}")
    assert said in str(caught.value)
