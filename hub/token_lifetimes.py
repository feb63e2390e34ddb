"""Token lifetimes and the token commands' error, apart from ``hub.tokens`` so that the
command line can offer its options without importing SQLAlchemy (every ``diasyndesi``
process, ``up`` and the sandboxes included, loads the CLI; that import alone cost ~25 MB
of each one's memory)."""

from __future__ import annotations

import re
from datetime import timedelta

from hub.errors import DiasyndesiError

MAX_LIFETIME = timedelta(days=365)
DEFAULT_LIFETIME = "90d"
MAX_GRACE = timedelta(days=7)
_DURATION = re.compile(r"^(\d{1,6})\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class TokenError(DiasyndesiError):
    """A token command that cannot be done as asked (unknown principal or id, bad duration)."""


def parse_duration(
    text: str, *, maximum: timedelta = MAX_LIFETIME, allow_zero: bool = False
) -> timedelta:
    """``30m``, ``12h``, ``90d``, ``8w`` → a timedelta no longer than ``maximum``
    (``0`` only with ``allow_zero``, for a grace period)."""
    value = text.strip().lower()
    if value == "never":
        raise TokenError(
            f"every token expires: give a duration such as 90d (at most {days_text(maximum)})"
        )
    if allow_zero and value == "0":
        return timedelta(0)
    match = _DURATION.match(value)
    if match is None:
        raise TokenError(f"{text!r} is not a duration: use e.g. 30m, 12h, 90d or 8w")
    duration = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    if duration == timedelta(0) and not allow_zero:
        raise TokenError("a token lifetime must be longer than zero")
    if duration > maximum:
        raise TokenError(f"{value} is longer than the maximum of {days_text(maximum)}")
    return duration


def days_text(duration: timedelta) -> str:
    return f"{duration.days}d" if duration.days else f"{int(duration.total_seconds())}s"
