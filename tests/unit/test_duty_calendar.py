"""The information duty's calendar (hub/duty_calendar.py, Registry.information_due): the
10th working day after the Athens date of a request, over the Orthodox Easter holidays, the
moved Labour Day, weekends, local feast days, Athens midnight and daylight saving time; and
the agencies' answer deadline counted the same way from the Athens date of the submission."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import holidays
import pytest

import hub.outbox
import tests.unit.test_api as referral_api
from hub.duty_calendar import (
    ATHENS,
    CALENDAR_YEARS,
    athens_date,
    end_of_day,
    in_calendar,
    is_overdue,
    nth_working_day_after,
    working_day_calendar,
)
from hub.registry import Centre, Registry
from hub.samples import sample_referral
from hub.settings import packaged_dir
from tests.unit.test_api import Env

env = referral_api.env  # the referral API tests' fixture: the real app, a migrated database


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load(packaged_dir("registry"))


def due(registry: Registry, requested_at: str, centre: str = "KK-KOZANI") -> date:
    """What the API does with a request's time: its Athens date, then the calendar."""
    return registry.information_due(centre, athens_date(datetime.fromisoformat(requested_at)))


# --------------------------------------------------------------------------- holidays


def test_orthodox_easter_2027_and_the_moved_labour_day(registry: Registry) -> None:
    gr = holidays.country_holidays("GR", years=2027)
    assert date(2027, 4, 30) in gr  # Good Friday
    assert date(2027, 5, 3) in gr  # Easter Monday (Orthodox; the Western one was 29 March)
    assert date(2027, 3, 29) not in gr
    assert date(2027, 5, 4) in gr  # 1 May is Holy Saturday: Labour Day moves to Tuesday
    # From Fri 23 Apr: 26 (1), 27 (2), 28 (3), 29 (4); Good Friday, the weekend, Easter
    # Monday, the moved Labour Day; 5 (5), 6 (6), 7 (7), 10 (8), 11 (9), Wed 12 May (10).
    assert registry.information_due("KK-KOZANI", date(2027, 4, 23)) == date(2027, 5, 12)


def test_whit_monday_2027(registry: Registry) -> None:
    assert date(2027, 6, 21) in holidays.country_holidays("GR", years=2027)
    # From Fri 11 Jun: 14-18 (1-5); Whit Monday 21; 22-25 (6-9), Mon 28 Jun (10).
    assert registry.information_due("KK-KOZANI", date(2027, 6, 11)) == date(2027, 6, 28)


def test_labour_day_2024_moved_past_easter(registry: Registry) -> None:
    gr = holidays.country_holidays("GR", years=2024)
    assert date(2024, 5, 1) not in gr  # Holy Wednesday: worked, the holiday moved to 7 May
    assert date(2024, 5, 7) in gr
    # From Mon 29 Apr: 30 (1), 1 May (2), 2 (3); Good Friday 3, Easter Monday 6, Labour
    # Day 7; 8 (4), 9 (5), 10 (6), 13 (7), 14 (8), 15 (9), Thu 16 May (10).
    assert registry.information_due("KK-KOZANI", date(2024, 4, 29)) == date(2024, 5, 16)


# --------------------------------------------------------------------------- the day of the request


def test_the_day_of_the_request_is_not_counted(registry: Registry) -> None:
    # Tue 2026-03-24; Wed 25 March is a holiday; 26 (1) ... Wed 8 Apr (10).
    assert registry.information_due("KK-KOZANI", date(2026, 3, 24)) == date(2026, 4, 8)


def test_a_request_on_a_weekend_or_holiday_counts_from_the_next_working_day(
    registry: Registry,
) -> None:
    """``get_nth_working_day`` steps a day before it counts, and skips what is not a working
    day: a request on a Saturday, a Sunday or a holiday has the next working day as its
    first, exactly as one made on the working day before it."""
    friday = registry.information_due("KK-KOZANI", date(2026, 3, 27))
    # From Fri 27 Mar: 30 Mar (1) ... 9 Apr (9); Good Friday 10, Easter Monday 13; Tue 14 (10).
    assert friday == date(2026, 4, 14)
    assert registry.information_due("KK-KOZANI", date(2026, 3, 28)) == friday  # Saturday
    assert registry.information_due("KK-KOZANI", date(2026, 3, 29)) == friday  # Sunday
    # Wed 25 March, a national holiday, is as Tue 24 March.
    assert registry.information_due("KK-KOZANI", date(2026, 3, 25)) == date(2026, 4, 8)
    # And the library's own behaviour, which the above relies on.
    gr = holidays.country_holidays("GR", years=2026)
    assert gr.get_nth_working_day(date(2026, 3, 28), 1) == date(2026, 3, 30)
    assert gr.get_nth_working_day(date(2026, 3, 25), 1) == date(2026, 3, 26)


def test_a_count_of_none_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        nth_working_day_after(working_day_calendar([2026], [], []), date(2026, 3, 28), 0)


# --------------------------------------------------------------------------- Athens time


def test_half_past_midnight_in_athens_is_the_previous_day_in_utc(registry: Registry) -> None:
    asked = datetime.fromisoformat("2026-11-03T00:30:00+02:00")  # a Tuesday in Athens
    assert asked.astimezone(UTC).date() == date(2026, 11, 2)  # still Monday in UTC
    assert athens_date(asked) == date(2026, 11, 3)
    assert due(registry, "2026-11-03T00:30:00+02:00") == date(2026, 11, 17)
    assert due(registry, "2026-11-02T22:30:00+00:00") == date(2026, 11, 17)  # the same instant
    assert due(registry, "2026-11-02T21:59:59+00:00") == date(2026, 11, 16)  # Monday, 23:59


def test_daylight_saving_time_boundaries(registry: Registry) -> None:
    # Summer time starts Sun 29 Mar 2026 at 03:00 (UTC+2 -> UTC+3).
    assert athens_date(datetime(2026, 3, 28, 21, 59, tzinfo=UTC)) == date(2026, 3, 28)
    assert athens_date(datetime(2026, 3, 28, 22, 0, tzinfo=UTC)) == date(2026, 3, 29)
    assert athens_date(datetime(2026, 3, 29, 20, 59, tzinfo=UTC)) == date(2026, 3, 29)
    assert athens_date(datetime(2026, 3, 29, 21, 0, tzinfo=UTC)) == date(2026, 3, 30)
    # Summer time ends Sun 25 Oct 2026 at 04:00 (UTC+3 -> UTC+2).
    assert athens_date(datetime(2026, 10, 24, 20, 59, tzinfo=UTC)) == date(2026, 10, 24)
    assert athens_date(datetime(2026, 10, 24, 21, 0, tzinfo=UTC)) == date(2026, 10, 25)
    assert athens_date(datetime(2026, 10, 25, 21, 59, tzinfo=UTC)) == date(2026, 10, 25)
    assert athens_date(datetime(2026, 10, 25, 22, 0, tzinfo=UTC)) == date(2026, 10, 26)
    # A due day's end is Athens midnight, whatever the offset that night.
    assert end_of_day(date(2026, 3, 28)) == datetime(2026, 3, 28, 22, 0, tzinfo=UTC)
    assert end_of_day(date(2026, 3, 29)) == datetime(2026, 3, 29, 21, 0, tzinfo=UTC)  # 23 h
    assert end_of_day(date(2026, 10, 24)) == datetime(2026, 10, 24, 21, 0, tzinfo=UTC)
    assert end_of_day(date(2026, 10, 25)) == datetime(2026, 10, 25, 22, 0, tzinfo=UTC)  # 25 h
    assert end_of_day(date(2026, 7, 1)).astimezone(ATHENS).hour == 0
    # Sat 24 Oct at 23:30 in Athens (summer time) is a Saturday request.
    assert due(registry, "2026-10-24T20:30:00+00:00") == due(registry, "2026-10-23T12:00:00+03:00")


def test_a_naive_time_has_no_athens_date() -> None:
    with pytest.raises(ValueError, match="naive"):
        athens_date(datetime(2026, 11, 3, 0, 30))


def test_overdue_is_not_answered_by_the_end_of_the_due_day_in_athens() -> None:
    overdue_at = end_of_day(date(2026, 11, 16))  # Monday 16 Nov, winter time
    assert overdue_at == datetime(2026, 11, 16, 22, 0, tzinfo=UTC)
    second = timedelta(seconds=1)
    assert not is_overdue(overdue_at, None, overdue_at - second)  # 23:59:59 in Athens
    assert is_overdue(overdue_at, None, overdue_at)  # midnight: overdue
    # Answered on the due day at 23:59:59: on time, whenever one looks.
    assert not is_overdue(overdue_at, overdue_at - second, overdue_at + timedelta(days=30))
    # Answered at midnight: late, and stays so.
    assert is_overdue(overdue_at, overdue_at, overdue_at + timedelta(days=30))


# --------------------------------------------------------------------------- limits


def test_the_calendar_answers_from_2020_to_2035(registry: Registry) -> None:
    assert (CALENDAR_YEARS.start, CALENDAR_YEARS.stop - 1) == (2020, 2035)
    assert in_calendar(date(2020, 1, 1)) and in_calendar(date(2035, 12, 31))
    assert not in_calendar(date(2019, 12, 31)) and not in_calendar(date(2036, 1, 1))
    # Wed 1 Jan 2020, New Year's Day: 2 (1), 3 (2), Epiphany Mon 6; 7 (3) ... Thu 16 (10).
    assert registry.information_due("KK-KOZANI", date(2020, 1, 1)) == date(2020, 1, 16)
    # Mon 31 Dec 2035 reaches into 2036: New Year's Day Tue 1 Jan; 2 (1) ... Tue 15 (10).
    assert registry.information_due("KK-KOZANI", date(2035, 12, 31)) == date(2036, 1, 15)
    # The limits are Athens dates: 23:30 UTC on 31 Dec 2019 is already 2020 in Athens.
    assert in_calendar(athens_date(datetime(2019, 12, 31, 23, 30, tzinfo=UTC)))
    assert not in_calendar(athens_date(datetime(2035, 12, 31, 22, 30, tzinfo=UTC)))


# --------------------------------------------------------------------------- local days


def test_kastoria_closes_for_saint_minas(registry: Registry) -> None:
    """11 November (Άγιος Μηνάς and the liberation of 1912) is a holiday of the
    Municipality of Kastoria: its centre's dates move, Kozani's do not."""
    assert registry.centres["KK-KASTORIA"].local_holidays == ["11-11"]
    # From Mon 2 Nov 2026: Kozani Mon 16 Nov; Kastoria skips Wed 11 Nov -> Tue 17 Nov.
    assert registry.information_due("KK-KOZANI", date(2026, 11, 2)) == date(2026, 11, 16)
    assert registry.information_due("KK-KASTORIA", date(2026, 11, 2)) == date(2026, 11, 17)
    # A request on the feast day itself counts from the next working day.
    assert registry.information_due("KK-KASTORIA", date(2026, 11, 11)) == registry.information_due(
        "KK-KASTORIA", date(2026, 11, 10)
    )


def test_a_local_feast_day_on_29_february_only_in_leap_years() -> None:
    calendar = working_day_calendar([2027, 2028], ["02-29"], [])
    assert date(2028, 2, 29) in calendar
    assert date(2027, 3, 1) not in calendar


def test_the_override_table_closes_one_day_of_one_year(registry: Registry) -> None:
    centre = Centre(
        code="KK-TEST",
        name_el="Κέντρο Δοκιμών",
        municipality="kozani",
        extra_closures=[date(2035, 5, 2)],  # e.g. Labour Day moved by a decision in 2035
    )
    custom = Registry(
        [*registry.centres.values(), centre],
        list(registry.agencies.values()),
        list(registry.programmes.values()),
    )
    # Easter Monday 30 Apr 2035, Labour Day Tue 1 May; from Fri 27 Apr the closure of
    # Wed 2 May moves the 10th working day from Tue 15 to Wed 16 May.
    assert custom.information_due("KK-KOZANI", date(2035, 4, 27)) == date(2035, 5, 15)
    assert custom.information_due("KK-TEST", date(2035, 4, 27)) == date(2035, 5, 16)


# --------------------------------------------------------------------------- agencies' due date


async def test_the_agencies_due_date_counts_from_the_athens_date_of_the_submission(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    class HalfPastMidnightInAthens(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> HalfPastMidnightInAthens:
            return cls(2026, 11, 2, 22, 30, tzinfo=UTC)  # Tue 3 Nov 00:30 in Athens

    monkeypatch.setattr(hub.outbox, "datetime", HalfPastMidnightInAthens)
    submitted = await env.submit(sample_referral(seed=11))
    assert submitted.status_code == 202, submitted.text
    referral_id = submitted.json()["id"]
    view = (await env.client.get(f"/v1/referrals/{referral_id}", headers=env.auth())).json()
    assert view["created_at"].startswith("2026-11-02T22:30:00")
    # Counted from Tuesday 3 Nov, not from Monday 2 Nov (the UTC date): Tue 17 Nov.
    assert view["due"] == "2026-11-17"
    assert {a["due"] for a in view["agencies"]} == {"2026-11-17"}
