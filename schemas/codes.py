"""Closed code lists shared by the API, the events, the mappings and the registries.

They are enums, not free strings, so that a typo is a validation error at the edge of the hub and
mapping files can be checked against the full list at start-up.
"""

from __future__ import annotations

from enum import StrEnum


class ProgrammeCode(StrEnum):
    """The programme catalogue; names and families live in registry/programmes.yaml."""

    GMI = "GMI"
    HOUSING_ALLOWANCE = "HOUSING_ALLOWANCE"
    DISABILITY_ALLOWANCE = "DISABILITY_ALLOWANCE"
    UNINSURED_ELDERLY_ALLOWANCE = "UNINSURED_ELDERLY_ALLOWANCE"
    UNEMPLOYMENT_REGISTRATION = "UNEMPLOYMENT_REGISTRATION"
    JOB_COUNSELLING = "JOB_COUNSELLING"
    VOCATIONAL_TRAINING = "VOCATIONAL_TRAINING"
    SOCIAL_GROCERY = "SOCIAL_GROCERY"
    SOUP_KITCHEN = "SOUP_KITCHEN"
    SOCIAL_PHARMACY = "SOCIAL_PHARMACY"
    FEAD_FOOD_AID = "FEAD_FOOD_AID"
    HELP_AT_HOME = "HELP_AT_HOME"
    HOMELESS_SHELTER = "HOMELESS_SHELTER"
    HOMELESS_DAY_CENTRE = "HOMELESS_DAY_CENTRE"
    ELDERLY_DAY_CARE = "ELDERLY_DAY_CARE"
    DISABILITY_DAY_CARE = "DISABILITY_DAY_CARE"
    PSYCHOSOCIAL_SUPPORT = "PSYCHOSOCIAL_SUPPORT"
    LEARNING_SUPPORT = "LEARNING_SUPPORT"
    ADULT_EDUCATION = "ADULT_EDUCATION"
    DIGITAL_SKILLS = "DIGITAL_SKILLS"
    GREEK_LANGUAGE = "GREEK_LANGUAGE"


class IdentifierType(StrEnum):
    """How a beneficiary is identified; only AMKA carries a check digit and a birth date."""

    AMKA = "AMKA"
    PAAYPA = "PAAYPA"
    PASSPORT = "PASSPORT"
    OTHER = "OTHER"


class EnrollmentStatus(StrEnum):
    """An agency's answer about a referral, in the hub's vocabulary (mappings translate)."""

    RECEIVED = "received"
    UNDER_REVIEW = "under_review"
    NEEDS_DOCUMENTS = "needs_documents"
    ACCEPTED = "accepted"
    ENROLLED = "enrolled"
    WAITLISTED = "waitlisted"
    REJECTED = "rejected"
    COMPLETED = "completed"
    WITHDRAWN = "withdrawn"


class DeliveryState(StrEnum):
    """Where the hub stands in delivering a referral to one agency (not the agency's answer)."""

    PENDING = "pending"
    DELIVERED = "delivered"
    RETRYING = "retrying"
    DEAD_LETTERED = "dead_lettered"
    WITHDRAWN = "withdrawn"


class InformationChannel(StrEnum):
    """How a beneficiary asked the centre to be informed (the information duty)."""

    IN_PERSON = "in_person"
    PHONE = "phone"
    EMAIL = "email"
    LETTER = "letter"
    OTHER = "other"


class WithdrawalReason(StrEnum):
    """Why a centre (or the originating agency) withdraws a referral or some of its programmes."""

    CONSENT_WITHDRAWN = "consent_withdrawn"
    BENEFICIARY_REQUEST = "beneficiary_request"
    DUPLICATE = "duplicate"
    ERROR = "error"


class Gender(StrEnum):
    """Needed for the ESF+ indicator breakdown; optional on a referral."""

    FEMALE = "female"
    MALE = "male"
    OTHER = "other"
    UNSPECIFIED = "unspecified"


class Vulnerability(StrEnum):
    """Vulnerability flags a caseworker may record; closed so reports and mappings rely on it."""

    LONG_TERM_UNEMPLOYED = "long_term_unemployed"
    UNEMPLOYED = "unemployed"
    LOW_INCOME = "low_income"
    HOMELESS = "homeless"
    AT_RISK_OF_HOMELESSNESS = "at_risk_of_homelessness"
    SINGLE_PARENT = "single_parent"
    LARGE_FAMILY = "large_family"
    ELDERLY_LIVING_ALONE = "elderly_living_alone"
    DISABILITY = "disability"
    CHRONIC_ILLNESS = "chronic_illness"
    MENTAL_HEALTH = "mental_health"
    ROMA = "roma"
    MIGRANT = "migrant"
    REFUGEE = "refugee"
    ASYLUM_SEEKER = "asylum_seeker"
    DOMESTIC_VIOLENCE_SURVIVOR = "domestic_violence_survivor"
    FORMER_PRISONER = "former_prisoner"
    SUBSTANCE_USE = "substance_use"


SPECIAL_CATEGORY_VULNERABILITIES: frozenset[Vulnerability] = frozenset(
    {
        Vulnerability.DISABILITY,
        Vulnerability.CHRONIC_ILLNESS,
        Vulnerability.MENTAL_HEALTH,
        Vulnerability.ROMA,
        Vulnerability.MIGRANT,
        Vulnerability.REFUGEE,
        Vulnerability.ASYLUM_SEEKER,
        Vulnerability.SUBSTANCE_USE,
    }
)
"""GDPR art. 9 data (health, disability, ethnic or migrant background): mappings must opt in."""
