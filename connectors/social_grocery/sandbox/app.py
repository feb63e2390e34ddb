"""Sandbox of the Kozani social grocery: an off-the-shelf case system behind an API key.

It stands in for the real thing where the hub can get it wrong: the system accepts Latin
characters only (a Greek name or street is refused with 422, so the mapping's ELOT 743
transliteration is tested end to end), capacity is limited (once the places are taken a
household is `waitlisted`, not refused), it enforces its own idempotency (a repeat key
answers 200 with the first answer; a reused key with another body is refused with 422),
and it pushes status to the hub: `received` at once, the decision after a delay.

The decision is fixed at intake from the case's sequence number (places are never freed
here), so a restarted sandbox with the same `state_file` answers the same way.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ConfigDict, Field

from connectors.sandbox_kit import (
    IdempotencyKeyReused,
    NonEmptySecret,
    PushingSandboxConfig,
    apply_faults,
    error_response,
    record_withdrawal,
    request_object,
    sandbox_app,
)

__all__ = ["SERVICES", "SocialGrocerySandboxConfig", "create_app"]

MAX_IDEMPOTENCY_KEY = 255
# The grocery's own service codes (the hub's mapping translates programme codes to these).
SERVICES = frozenset({"GROCERY", "MEALS", "PHARMACY", "FEAD"})
_GREEK = re.compile("[\u0370-\u03ff\u1f00-\u1fff]")


class SocialGrocerySandboxConfig(PushingSandboxConfig):
    """Settings of one grocery sandbox; secrets are `SecretStr` so they never show in reprs."""

    model_config = ConfigDict(extra="forbid")

    api_key: NonEmptySecret
    capacity: int = Field(default=50, ge=0, description="places before households wait")
    agency_id: str = "kozani-social-grocery"


def _greek_fields(value: Any, path: str = "") -> list[str]:
    """Paths of every key or string value holding a Greek character (never the values)."""
    if isinstance(value, str):
        return [path or "(body)"] if _GREEK.search(value) else []
    if isinstance(value, dict):
        found: list[str] = []
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if _GREEK.search(str(key)):
                found.append(child)
            found += _greek_fields(item, child)
        return found
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _greek_fields(item, f"{path}[{i}]")]
    return []


def _invalid(body: dict[str, Any]) -> list[dict[str, str]]:
    """Field-level errors, as the grocery system reports them: field names, never values."""
    errors = [{"field": field, "message": "Latin characters only"} for field in _greek_fields(body)]
    external_id = body.get("external_id")
    if not isinstance(external_id, str) or not external_id:
        errors.append({"field": "external_id", "message": "required non-empty string"})
    services = body.get("services")
    if (
        not isinstance(services, list)
        or not services
        or not all(isinstance(s, str) and s in SERVICES for s in services)
    ):
        errors.append({"field": "services", "message": f"non-empty list of {sorted(SERVICES)}"})
    return errors


def create_app(config: SocialGrocerySandboxConfig) -> FastAPI:
    """Build the grocery sandbox; `app.state` exposes ledger, faults and pusher to tests."""
    parts = sandbox_app("Kozani social grocery sandbox", config)
    app, ledger, faults, pusher = parts.app, parts.ledger, parts.faults, parts.pusher
    api_key = config.api_key.get_secret_value().encode()

    def decision(case_id: str) -> str:
        rec = ledger.by_reference(case_id)
        if rec is not None and ledger.withdrawn_at(rec.idempotency_key) is not None:
            return "withdrawn"
        sequence = int(case_id.rsplit("-", 1)[1])
        return "accepted" if sequence <= config.capacity else "waitlisted"

    def authorised(request: Request) -> bool:
        given = request.headers.get("x-api-key", "").encode()
        return bool(given) and secrets.compare_digest(given, api_key)

    @app.post("/api/referrals", tags=["referrals"], status_code=201)
    async def refer(request: Request) -> Response:
        """Take a household referral; idempotent per `Idempotency-Key`."""
        await request.body()  # the whole request first: a real agency keeps working on it
        # even when the caller disconnects mid-call (a SIGKILLed worker), so faults come after
        key = request.headers.get("idempotency-key", "").strip()
        if (fault := await apply_faults(faults, key=key or None)) is not None:
            return fault
        if not authorised(request):
            return error_response(401, "invalid_api_key")
        if not key or len(key) > MAX_IDEMPOTENCY_KEY:
            return error_response(400, "missing_idempotency_key")
        body = request_object(await request.body())
        if isinstance(body, JSONResponse):
            return body
        if errors := _invalid(body):
            return error_response(422, "validation_failed", errors=errors)
        try:
            rec, is_new = ledger.record(key, body["external_id"], body, lambda n: f"SG-KOZ-{n:06d}")
        except IdempotencyKeyReused:
            return error_response(422, "idempotency_key_reused")
        assert rec.reference is not None
        status = decision(rec.reference)
        answer = {"case_id": rec.reference, "status": status}
        steps = [(0.0, "received"), (config.decision_delay_s, status)]
        if status == "withdrawn":  # cancelled before it came: born withdrawn
            steps = [(0.0, "withdrawn")]
        pusher.answer_once(rec.referral_id, rec.reference, steps)
        return JSONResponse(answer, status_code=201 if is_new else 200)

    @app.post("/api/referrals/cancellations", tags=["referrals"], status_code=201)
    async def cancel(request: Request) -> Response:
        """Cancel the case referred under ``external_key``, whole or some services;
        idempotent per `Idempotency-Key`. A cancellation of a case not received yet is kept
        (journalled): that case is born cancelled."""
        await request.body()
        key = request.headers.get("idempotency-key", "").strip()
        if (fault := await apply_faults(faults, key=key or None)) is not None:
            return fault
        if not authorised(request):
            return error_response(401, "invalid_api_key")
        if not key or len(key) > MAX_IDEMPOTENCY_KEY:
            return error_response(400, "missing_idempotency_key")
        recorded = record_withdrawal(
            await request.body(),
            key,
            ledger,
            pusher,
            config.decision_delay_s,
            key="external_key",
            referral="external_id",
            programmes="services",
        )
        if isinstance(recorded, JSONResponse):
            return recorded
        rec, is_new, case_id = recorded.record, recorded.is_new, recorded.reference
        state = decision(case_id) if case_id else "withdrawn" if rec.whole else "unknown"
        return JSONResponse(
            {"case_id": case_id, "status": state}, status_code=201 if is_new else 200
        )

    @app.get("/api/referrals/{case_id}", tags=["referrals"])
    async def case(case_id: str, request: Request) -> Response:
        """One case and its decision, for a hub that polls instead of listening."""
        if (fault := await apply_faults(faults)) is not None:
            return fault
        if not authorised(request):
            return error_response(401, "invalid_api_key")
        rec = ledger.by_reference(case_id)
        if rec is None:
            return error_response(404, "not_found")
        return JSONResponse(
            {"case_id": case_id, "external_id": rec.referral_id, "status": decision(case_id)}
        )

    return app
