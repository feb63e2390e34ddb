"""The referral: what a centre submits (``ReferralRequest``), what the hub carries (``Referral``).

Validation messages name the problem and the field, never the submitted value: they reach logs,
API answers and dead-letter headers, where an AMKA, an AFM or a name must not appear.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from stdnum import exceptions as stdnum_errors
from stdnum.gr import amka, vat

from schemas.base import CanonicalModel, CentreCode, ReferralId, Slug
from schemas.codes import Gender, IdentifierType, ProgrammeCode, Vulnerability

MIN_BIRTH_DATE = date(1900, 1, 1)
CONSENT_CLOCK_SKEW = timedelta(minutes=5)

_DIGITS = re.compile(r"[0-9]+")

Name = Annotated[str, StringConstraints(min_length=1, max_length=100)]
Afm = Annotated[str, StringConstraints(pattern=r"^[0-9]{9}$")]
Phone = Annotated[str, StringConstraints(pattern=r"^\+?[0-9]{7,15}$", max_length=20)]
"""E.164-ish: digits with an optional leading plus, no spaces."""
Email = Annotated[str, StringConstraints(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)]
"""A plausibility check only; deliverability is the centre's concern."""


def _validate_amka(value: str) -> str:
    """Check format and check digit; map stdnum's errors to messages without the value."""
    if not _DIGITS.fullmatch(value):
        raise ValueError("AMKA must contain only digits")
    if len(value) != 11:
        raise ValueError("AMKA must be exactly 11 digits")
    try:
        return str(amka.validate(value))
    except stdnum_errors.InvalidChecksum:
        raise ValueError("AMKA check digit is invalid") from None
    except stdnum_errors.InvalidComponent:
        raise ValueError("AMKA does not start with a valid birth date (DDMMYY)") from None
    except stdnum_errors.ValidationError:
        raise ValueError("AMKA is not valid") from None


def amka_agrees_with(value: str, birth_date: date) -> bool:
    """True if a valid AMKA encodes ``birth_date``.

    stdnum guesses the century (19xx, else 20xx): compare only day, month and two-digit year.
    """
    encoded = amka.get_birth_date(value)
    return (encoded.day, encoded.month, encoded.year % 100) == (
        birth_date.day,
        birth_date.month,
        birth_date.year % 100,
    )


class Identifier(CanonicalModel):
    """How the beneficiary is known; only an AMKA can be checked (PAAYPA, passports vary)."""

    type: IdentifierType
    value: Annotated[str, StringConstraints(min_length=1, max_length=32)]

    @field_validator("value")
    @classmethod
    def _check_value(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("type") == IdentifierType.AMKA:
            return _validate_amka(value)
        return value


class Address(CanonicalModel):
    """Residence; the municipality slug is what routing and reports use."""

    street: Annotated[str, StringConstraints(max_length=200)]
    postal_code: Annotated[str, StringConstraints(pattern=r"^[1-8][0-9]{4}$")]
    municipality: Slug


class Beneficiary(CanonicalModel):
    """The person referred. Every field beyond the identifier, names and birth date is optional."""

    identifier: Identifier
    afm: Afm | None = None
    given_name: Name
    family_name: Name
    birth_date: date
    gender: Gender | None = None
    phone: Phone | None = None
    email: Email | None = None
    address: Address | None = None
    household_size: Annotated[int, Field(ge=1, le=30)] | None = None
    vulnerabilities: list[Vulnerability] = Field(default_factory=list)

    @field_validator("afm")
    @classmethod
    def _check_afm(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(vat.validate(value))
        except stdnum_errors.InvalidChecksum:
            raise ValueError("AFM check digit is invalid") from None
        except stdnum_errors.ValidationError:
            raise ValueError("AFM is not valid") from None

    @field_validator("birth_date")
    @classmethod
    def _check_birth_date(cls, value: date) -> date:
        if value < MIN_BIRTH_DATE:
            raise ValueError("birth_date must not be before 1900-01-01")
        if value > datetime.now(UTC).date():
            raise ValueError("birth_date must not be in the future")
        return value

    @field_validator("vulnerabilities")
    @classmethod
    def _check_unique_vulnerabilities(cls, value: list[Vulnerability]) -> list[Vulnerability]:
        if len(set(value)) != len(value):
            raise ValueError("vulnerabilities must not repeat a flag")
        return value

    @model_validator(mode="after")
    def _check_amka_birth_date(self) -> Beneficiary:
        ident = self.identifier
        if ident.type == IdentifierType.AMKA and not amka_agrees_with(ident.value, self.birth_date):
            raise ValueError("AMKA does not agree with birth_date")
        return self


class Consent(CanonicalModel):
    """The beneficiary's consent to share the record with the agencies the referral is routed to."""

    given_at: AwareDatetime
    scope: Literal["routed_agencies"]
    document_ref: Annotated[str, StringConstraints(min_length=1, max_length=100)]

    @field_validator("given_at")
    @classmethod
    def _check_not_future(cls, value: datetime) -> datetime:
        if value > datetime.now(UTC) + CONSENT_CLOCK_SKEW:
            raise ValueError("given_at must not be in the future")
        return value


class ReferralRequest(CanonicalModel):
    """The body of ``POST /v1/referrals`` (the README's referral contract)."""

    centre: CentreCode
    caseworker: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    beneficiary: Beneficiary
    consent: Consent
    programmes: Annotated[list[ProgrammeCode], Field(min_length=1, max_length=len(ProgrammeCode))]
    notes: Annotated[str, StringConstraints(max_length=4000)] | None = None

    @field_validator("programmes")
    @classmethod
    def _check_unique_programmes(cls, value: list[ProgrammeCode]) -> list[ProgrammeCode]:
        if len(set(value)) != len(value):
            raise ValueError("programmes must not repeat a code")
        return value


class Referral(ReferralRequest):
    """The canonical referral carried on Kafka: the request plus what the hub decided at intake.

    ``routed`` is fixed at submission so later registry edits do not rewrite history.
    """

    id: ReferralId
    created_at: AwareDatetime
    municipality: Slug
    routed: list[Slug]

    @field_validator("routed")
    @classmethod
    def _check_unique_routed(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("routed must not repeat an agency")
        return value
