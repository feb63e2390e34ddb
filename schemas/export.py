"""Generate the checked-in JSON Schema files from the models, and tell when they are stale.

Output is byte-for-byte deterministic (sorted keys, fixed indent, trailing newline) so CI can
compare the checked-in files with a fresh rendering and fail on any drift.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel

from schemas.events import (
    AgencyStatusUpdate,
    DeliveryOutcome,
    ReferralSubmitted,
    ReferralWithdrawn,
    StatusChanged,
    WithdrawalOutcome,
)
from schemas.information_request import (
    InformationRequest,
    InformationRequestAnswer,
    InformationRequestNew,
)
from schemas.referral import Referral, ReferralRequest

JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_BASE_URI: Final = "https://diasyndesi.example/schemas/v1/"
SCHEMA_SUFFIX: Final = ".schema.json"
DEFAULT_OUT_DIR: Final = Path(__file__).parent / "json"

PUBLIC_MODELS: Final[dict[str, type[BaseModel]]] = {
    "referral-request": ReferralRequest,
    "referral": Referral,
    "referral-submitted": ReferralSubmitted,
    "referral-withdrawn": ReferralWithdrawn,
    "delivery-outcome": DeliveryOutcome,
    "withdrawal-outcome": WithdrawalOutcome,
    "status-changed": StatusChanged,
    "agency-status-update": AgencyStatusUpdate,
    "information-request-new": InformationRequestNew,
    "information-request-answer": InformationRequestAnswer,
    "information-request": InformationRequest,
}
"""File stem of each published schema; the stems are part of the ``$id`` and must not change."""


def _schema_document(stem: str, model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(mode="validation")
    schema["$schema"] = JSON_SCHEMA_DIALECT
    schema["$id"] = f"{SCHEMA_BASE_URI}{stem}{SCHEMA_SUFFIX}"
    schema["title"] = model.__name__
    return schema


def render_json_schemas() -> dict[str, str]:
    """File name to file text for every public model, exactly as ``export_json_schemas`` writes."""
    return {
        f"{stem}{SCHEMA_SUFFIX}": json.dumps(
            _schema_document(stem, model), indent=2, sort_keys=True, ensure_ascii=False
        )
        + "\n"
        for stem, model in PUBLIC_MODELS.items()
    }


def export_json_schemas(out_dir: Path = DEFAULT_OUT_DIR) -> list[Path]:
    """Write one schema file per public model into ``out_dir``; return paths in a fixed order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, text in render_json_schemas().items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale_json_schemas(out_dir: Path = DEFAULT_OUT_DIR) -> list[str]:
    """Names of schema files in ``out_dir`` that are missing, differ, or no longer generated.

    Empty means the directory matches the models; a leftover ``*.schema.json`` of a removed model
    counts as stale so that deleted contracts do not linger in the repository.
    """
    expected = render_json_schemas()
    stale = [
        name
        for name, text in expected.items()
        if not (out_dir / name).is_file() or (out_dir / name).read_text(encoding="utf-8") != text
    ]
    if out_dir.is_dir():
        stale.extend(
            path.name for path in out_dir.glob(f"*{SCHEMA_SUFFIX}") if path.name not in expected
        )
    return sorted(stale)
