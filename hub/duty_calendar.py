"""The calendar of the information duty: on their request, beneficiaries are told
within ten working days how the requests they made through the centre stand.

Every date here is an Athens date. A person who asks at 00:30 Athens time on a Tuesday asked
on Tuesday, although it is still Monday in UTC; an answer given at 23:59 Athens time on the
due day is on time, one given at midnight is late.

Working days are Monday to Friday, less the Greek public holidays (the ``holidays`` package:
the Orthodox Easter set, Labour Day moved when the state moves it) and the centre's own
local holidays and closures (``registry/centres.yaml``). The day of the request is not
counted; the next working day is the first (``HolidayBase.get_nth_working_day``), so a
request made on a Saturday, a Sunday or a holiday has the same due date as one made on the
working day before it (docs/decisions/0016).

Nothing here imports the hub: the registry feeds each centre's days in.
"""

from __future__ import annotations

from calendar import isleap
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import holidays

ATHENS = ZoneInfo("Europe/Athens")
"""Greek civil time; the ``tzdata`` package stands in where the OS has no zoneinfo."""

INFORMATION_DUE_WORKING_DAYS = 10
"""The right to be informed within 10 working days of asking."""

CALENDAR_YEARS = range(2020, 2036)
"""The years the information-duty calendar answers for (by the Athens date of the request).
Outside it the API refuses the date: the library projects holidays for any year, but a
centre's closures are only known for a few years ahead, and a date before 2020 is a typo."""


def athens_date(moment: datetime) -> date:
    """The Athens calendar date of an aware instant."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a naive datetime has no Athens date")
    return moment.astimezone(ATHENS).date()


def end_of_day(day: date) -> datetime:
    """The instant (UTC) the Athens day ``day`` ends: the next day's midnight in Athens.

    Greek clocks change at 03:00/04:00, so midnight always exists and is unambiguous."""
    return datetime.combine(day + timedelta(days=1), time(), tzinfo=ATHENS).astimezone(UTC)


def in_calendar(day: date) -> bool:
    return day.year in CALENDAR_YEARS


def is_overdue(overdue_at: datetime, answered_at: datetime | None, now: datetime) -> bool:
    """Not answered by the end of the due day (``overdue_at``, from ``end_of_day``): still
    open at or after that instant, or answered at or after it (late)."""
    return (answered_at if answered_at is not None else now) >= overdue_at


def working_day_calendar(
    years: Iterable[int], local_holidays: Iterable[str], extra_closures: Iterable[date]
) -> holidays.HolidayBase:
    """Greek public holidays for ``years``, plus a centre's local feast days (``MM-DD``,
    every year; 29 February only in leap years) and its one-off closures (any year)."""
    wanted = sorted(set(years))
    calendar = holidays.country_holidays("GR", years=wanted)
    for year in wanted:
        for month_day in local_holidays:
            month, day = (int(part) for part in month_day.split("-"))
            if (month, day) == (2, 29) and not isleap(year):
                continue
            calendar[date(year, month, day)] = "local feast day"
    for closure in extra_closures:
        calendar[closure] = "local closure"
    return calendar


def nth_working_day_after(calendar: holidays.HolidayBase, day: date, n: int) -> date:
    """The ``n``-th working day after ``day`` (``day`` itself never counts, whatever it
    is). ``calendar`` must cover the years the count reaches: local days are only in the
    years it was built for."""
    if n < 1:
        raise ValueError("count at least one working day")
    due: date = calendar.get_nth_working_day(day, n)
    return due
