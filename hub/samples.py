"""Realistic, synthetic referrals for the demo, the benchmark and the tests.

Every person here is invented; AMKA and AFM numbers are generated with valid check digits
(python-stdnum's algorithms) and agree with the birth date.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from typing import Any

from stdnum import luhn

GIVEN_NAMES = [
    "Μαρία",
    "Ελένη",
    "Γεώργιος",
    "Δημήτριος",
    "Αικατερίνη",
    "Νικόλαος",
    "Σοφία",
    "Χρήστος",
    "Ευαγγελία",
    "Ιωάννης",
    "Αθανάσιος",
    "Παναγιώτα",
]
FAMILY_NAMES = [
    "Παπαδοπούλου",
    "Γεωργίου",
    "Οικονόμου",
    "Καραγιάννης",
    "Βασιλείου",
    "Αθανασίου",
    "Ζαφειρίου",
    "Μπουρνάζος",
    "Τσακίρης",
    "Ευθυμίου",
]


def make_amka(birth: date, serial: int) -> str:
    body = f"{birth:%d%m%y}{serial % 10000:04d}"
    return body + luhn.calc_check_digit(body)


def make_afm(seed: int) -> str:
    body = f"{seed % 10**8:08d}"
    total = sum(int(d) << (8 - i) for i, d in enumerate(body))
    return body + str(total % 11 % 10)


def sample_referral(
    centre: str = "KK-KOZANI",
    programmes: list[str] | None = None,
    *,
    seed: int | None = None,
    municipality: str = "kozani",
) -> dict[str, Any]:
    """A valid ``POST /v1/referrals`` body for ``centre``."""
    rng = random.Random(seed)
    birth = date(1960, 1, 1) + timedelta(days=rng.randrange(0, 365 * 40))
    return {
        "centre": centre,
        "caseworker": f"sw-{rng.randrange(1, 40):03d}",
        "beneficiary": {
            "identifier": {"type": "AMKA", "value": make_amka(birth, rng.randrange(10000))},
            "afm": make_afm(rng.randrange(10**8)),
            "given_name": rng.choice(GIVEN_NAMES),
            "family_name": rng.choice(FAMILY_NAMES),
            "birth_date": birth.isoformat(),
            "gender": rng.choice(["female", "male"]),
            "phone": f"+30246{rng.randrange(10**7):07d}",
            "email": f"person{rng.randrange(10**6)}@example.org",
            "address": {
                "street": "Δημοκρατίας 1",
                "postal_code": "50100",
                "municipality": municipality,
            },
            "household_size": rng.randrange(1, 6),
            "vulnerabilities": ["long_term_unemployed"],
        },
        "consent": {
            "given_at": (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
            "scope": "routed_agencies",
            "document_ref": f"{centre}/2026/{rng.randrange(10000):04d}",
        },
        "programmes": programmes or ["UNEMPLOYMENT_REGISTRATION", "JOB_COUNSELLING"],
        "notes": "Συνάντηση στο Κέντρο Κοινότητας· χρειάζεται στήριξη για εγγραφή.",
    }
