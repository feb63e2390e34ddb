"""The three registries the law asks for (centres, agencies, programmes), loaded from the
data files under ``registry/``, and routing: which agencies a referral goes to.

The routed list is computed once at submission and stored with the referral, so later
edits to these files never rewrite history.
"""

from __future__ import annotations

from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

import holidays
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from hub.duty_calendar import (
    INFORMATION_DUE_WORKING_DAYS,
    nth_working_day_after,
    working_day_calendar,
)
from hub.errors import ConfigurationError, RoutingError
from schemas.codes import ProgrammeCode

Family = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{1,62}$")]
"""An agency family's name; which families exist is up to the installed plugins
(``hub/families.py`` checks the registry against them at start-up)."""


class Centre(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    code: str
    name_el: str
    municipality: str
    local_holidays: list[
        Annotated[str, StringConstraints(pattern=r"^(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$")]
    ] = Field(default_factory=list, description="MM-DD feast days")
    extra_closures: list[date] = Field(
        default_factory=list,
        description="the override table: one-off closures (YYYY-MM-DD) the holidays "
        "library cannot know, e.g. a national holiday moved by decision, a local one "
        "established for one year only",
    )

    @field_validator("local_holidays")
    @classmethod
    def _real_days(cls, value: list[str]) -> list[str]:
        for month_day in value:
            month, day = (int(part) for part in month_day.split("-"))
            date(2000, month, day)  # a leap year: 02-29 passes, 04-31 raises ValueError
        return value


class Agency(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=r"^[a-z][a-z0-9-]{1,62}$")
    name_el: str
    name_en: str
    family: Family
    active: bool = True
    programmes: list[ProgrammeCode]
    municipalities: list[str]
    mapping: str

    def serves(self, municipality: str) -> bool:
        return "*" in self.municipalities or municipality in self.municipalities


class Programme(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    code: ProgrammeCode
    name_el: str
    name_en: str
    family: Family


def _load_list(path: Path, model: type[BaseModel]) -> list[Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"{path}: cannot read registry file ({exc})") from exc
    if not isinstance(raw, list):
        raise ConfigurationError(f"{path}: expected a list of entries")
    items = []
    for index, entry in enumerate(raw):
        try:
            items.append(model.model_validate(entry))
        except ValidationError as exc:
            first = exc.errors(include_input=False)[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigurationError(f"{path}: entry {index}: {where}: {first['msg']}") from None
    return items


class Registry:
    """Centres, agencies and programmes, validated on load."""

    def __init__(
        self, centres: list[Centre], agencies: list[Agency], programmes: list[Programme]
    ) -> None:
        self.centres = {c.code: c for c in centres}
        self.agencies = {a.id: a for a in agencies}
        self.programmes = {p.code: p for p in programmes}
        self._due: dict[tuple[str, date], date] = {}
        self._calendars: dict[tuple[str, int], holidays.HolidayBase] = {}  # costly to build
        missing = set(ProgrammeCode) - set(self.programmes)
        if missing:
            raise ConfigurationError(
                f"programme registry lacks {sorted(code.value for code in missing)}"
            )
        for name, entries, count in (
            ("centre", self.centres, len(centres)),
            ("agency", self.agencies, len(agencies)),
            ("programme", self.programmes, len(programmes)),
        ):
            if len(entries) != count:
                raise ConfigurationError(f"the {name} registry repeats an id")

    @classmethod
    def load(cls, directory: Path) -> Registry:
        return cls(
            _load_list(directory / "centres.yaml", Centre),
            _load_list(directory / "agencies.yaml", Agency),
            _load_list(directory / "programmes.yaml", Programme),
        )

    @cached_property
    def active_agencies(self) -> list[Agency]:
        return [a for a in self.agencies.values() if a.active]

    @cached_property
    def municipalities(self) -> frozenset[str]:
        """The municipalities the registry knows: its centres' and those its agencies name."""
        named = {m for a in self.agencies.values() for m in a.municipalities if m != "*"}
        return frozenset(named | {c.municipality for c in self.centres.values()})

    def routing_municipality(self, centre_code: str, residence: str | None) -> str:
        """The municipality a referral is routed by: the beneficiary's municipality of
        residence when the address names one the registry knows, else the centre's. An
        unknown name (a typo, a municipality with no centre or agency here) falls back to
        the centre's without failing intake; the answer names the one used."""
        centre = self.centres.get(centre_code)
        if centre is None:
            raise RoutingError(f"unknown centre {centre_code!r}", field="centre")
        if residence is not None and residence in self.municipalities:
            return residence
        return centre.municipality

    def route(
        self,
        centre_code: str,
        programmes: list[ProgrammeCode],
        *,
        municipality: str | None = None,
        origin: str | None = None,
    ) -> list[str]:
        """Agency ids for these programmes in ``municipality`` (default: the centre's), in
        registry order, never the agency ``origin`` that referred the person itself.

        Raises RoutingError naming the first programme no other active agency serves there.
        """
        centre = self.centres.get(centre_code)
        if centre is None:
            raise RoutingError(f"unknown centre {centre_code!r}", field="centre")
        where = municipality or centre.municipality
        routed: list[str] = []
        for index, programme in enumerate(programmes):
            serving = [
                a.id for a in self.active_agencies if programme in a.programmes and a.serves(where)
            ]
            takers = [agency for agency in serving if agency != origin]
            if not takers:
                if serving:
                    message = (
                        f"only {origin}, the referring agency, handles {programme.value} in "
                        f"municipality {where}: a referral is never routed back to its origin"
                    )
                else:
                    message = f"no agency handles {programme.value} in municipality {where}"
                raise RoutingError(message, field=f"programmes.{index}")
            routed.extend(t for t in takers if t not in routed)
        order = list(self.agencies)
        return sorted(routed, key=order.index)

    def information_due(self, centre_code: str, day: date) -> date:
        """The 10th working day after ``day`` (an Athens date, itself not counted) at this
        centre: weekends, Greek public holidays, the centre's local feast days and its
        closures are not working days (``hub/duty_calendar.py``). The information duty's
        due date, counted from the request; an agency's answer deadline, counted from the
        submission."""
        cached = self._due.get((centre_code, day))
        if cached is not None:
            return cached
        due = nth_working_day_after(
            self._calendar(centre_code, day.year), day, INFORMATION_DUE_WORKING_DAYS
        )
        if len(self._due) > 10_000:
            self._due.clear()
        self._due[(centre_code, day)] = due
        return due

    def _calendar(self, centre_code: str, year: int) -> holidays.HolidayBase:
        """The centre's non-working days of ``year`` and the next (ten working days never
        reach further)."""
        calendar = self._calendars.get((centre_code, year))
        if calendar is None:
            centre = self.centres.get(centre_code)
            if centre is None:
                raise RoutingError(f"unknown centre {centre_code!r}", field="centre")
            calendar = working_day_calendar(
                (year, year + 1), centre.local_holidays, centre.extra_closures
            )
            self._calendars[(centre_code, year)] = calendar
        return calendar
