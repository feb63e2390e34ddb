"""The base model and reusable field types of every canonical schema.

One base so that every model rejects unknown fields (a typo is an error, not silently dropped data),
never echoes submitted values in validation errors (they are personal data), and cannot be mutated
after validation (transformations return new records).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

SLUG_PATTERN = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

Slug = Annotated[str, StringConstraints(pattern=SLUG_PATTERN, min_length=1, max_length=64)]
"""Municipality and agency ids: lowercase ASCII words joined by hyphens."""

ReferralId = Annotated[str, StringConstraints(pattern=UUID_PATTERN)]
"""A referral id as the hub issues it: a lowercase canonical UUID string."""

CentreCode = Annotated[str, StringConstraints(pattern=r"^KK-[A-Z0-9-]+$", max_length=64)]
"""A Community Centre code such as ``KK-KOZANI``."""

AgencyReference = Annotated[str, StringConstraints(min_length=1, max_length=64)]
"""The agency's own reference for a referral, e.g. its protocol number."""


class CanonicalModel(BaseModel):
    """Base of all canonical models; see the module docstring for why each setting is on."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,
        str_strip_whitespace=True,
    )
