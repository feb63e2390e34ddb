"""Sandbox of the Kozani Lifelong Learning Centre (ΚΔΒΜ), served over TLS asking for a client
certificate (``hub.servers``): the agency API answers 401 without a verified one,
``/_sandbox/*`` answers anyone. Like the grocery: its own idempotency, a decision
fixed at intake by the sequence number, ``received`` then the decision pushed to the hub."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ConfigDict, Field

from connectors.sandbox_kit import (
    IdempotencyKeyReused,
    PushingSandboxConfig,
    apply_faults,
    error_response,
    record_withdrawal,
    sandbox_app,
)

__all__ = ["COURSES", "LifelongLearningSandboxConfig", "create_app"]

# The centre's own course areas (the hub's mapping translates programme codes to these).
COURSES = frozenset({"GENERAL_ADULT_EDUCATION", "DIGITAL_SKILLS", "GREEK_AS_A_SECOND_LANGUAGE"})


class LifelongLearningSandboxConfig(PushingSandboxConfig):
    model_config = ConfigDict(extra="forbid")

    agency_id: str = "kozani-lifelong-learning"
    capacity: int = Field(default=50, ge=0, description="places; after them, waitlisted")
    reject_every: int = Field(default=10, ge=0, description="every n-th rejected; 0: none")


def _invalid(body: dict[str, Any]) -> list[str]:
    """Names of the wrong fields, never their values."""
    referral, courses = body.get("hub_referral_id"), body.get("courses")
    wrong = [] if isinstance(referral, str) and referral else ["hub_referral_id"]
    if not isinstance(courses, list) or not courses or not set(map(str, courses)) <= COURSES:
        wrong.append("courses")
    return wrong


def create_app(config: LifelongLearningSandboxConfig) -> FastAPI:
    """Build the sandbox; ``app.state`` exposes ledger, faults and pusher to tests."""
    parts = sandbox_app("Kozani Lifelong Learning Centre sandbox", config)
    app, ledger, faults, pusher = parts.app, parts.ledger, parts.faults, parts.pusher

    def status(enrolment_id: str) -> str:
        sequence = int(enrolment_id.rsplit("-", 1)[1])
        rec = ledger.by_reference(enrolment_id)
        if rec is not None and ledger.withdrawn_at(rec.idempotency_key) is not None:
            return "withdrawn"
        if config.reject_every and sequence % config.reject_every == 0:
            return "rejected"
        return "accepted" if sequence <= config.capacity else "waitlisted"

    async def refusal(request: Request, key: str | None = None) -> Response | None:
        """Injected faults first, as in every sandbox, then the client certificate."""
        if (fault := await apply_faults(faults, key=key)) is not None:
            return fault
        tls = (request.scope.get("extensions") or {}).get("tls") or {}
        return (
            None
            if tls.get("client_cert_chain")
            else error_response(401, "client_certificate_required")
        )

    @app.post("/v1/enrolments", status_code=201)
    async def enrol(request: Request) -> Response:
        raw = await request.body()  # all of it first: a real centre goes on if the caller dies
        key = request.headers.get("idempotency-key", "").strip()
        if (refused := await refusal(request, key or None)) is not None:
            return refused
        if not key or len(key) > 255:
            return error_response(400, "missing_idempotency_key")
        try:
            body = json.loads(raw)
        except ValueError:
            return error_response(400, "invalid_json")
        if fields := _invalid(body) if isinstance(body, dict) else [""]:
            return error_response(422, "validation_failed", errors=[{"field": f} for f in fields])
        try:
            numbered = lambda n: f"KDBM-KOZ-{n:06d}"  # noqa: E731
            rec, is_new = ledger.record(key, body["hub_referral_id"], body, numbered)
        except IdempotencyKeyReused:
            return error_response(422, "idempotency_key_reused")
        reference = str(rec.reference)
        if ledger.withdrawn_at(key) is not None:  # cancelled before it came: born withdrawn
            steps = [(0.0, "withdrawn")]
        else:
            steps = [(0.0, "received"), (config.decision_delay_s, status(reference))]
        pusher.answer_once(rec.referral_id, reference, steps)
        answer = {"enrolment_id": reference, "status": status(reference)}
        return JSONResponse(answer, status_code=201 if is_new else 200)

    @app.get("/v1/enrolments/{enrolment_id}")
    async def enrolment(enrolment_id: str, request: Request) -> Response:
        if (refused := await refusal(request)) is not None:
            return refused
        if ledger.by_reference(enrolment_id) is None:
            return error_response(404, "not_found")
        return JSONResponse({"enrolment_id": enrolment_id, "status": status(enrolment_id)})

    @app.post("/v1/enrolments/cancellations", status_code=201)
    async def cancel(request: Request) -> Response:
        """Cancel the enrolment requested under ``enrolment_key``, whole or some courses;
        idempotent per ``Idempotency-Key``. One the centre has not got yet is kept (the
        journal survives a restart) and the enrolment is born cancelled when it comes.
        ``withdrawn`` is pushed after any decision still owed, so the hub ends on it."""
        raw = await request.body()
        key = request.headers.get("idempotency-key", "").strip()
        if (refused := await refusal(request, key or None)) is not None:
            return refused
        if not key or len(key) > 255:
            return error_response(400, "missing_idempotency_key")
        recorded = record_withdrawal(
            raw,
            key,
            ledger,
            pusher,
            config.decision_delay_s,
            key="enrolment_key",
            referral="hub_referral_id",
            programmes="courses",
        )
        if isinstance(recorded, JSONResponse):
            return recorded
        rec, is_new, reference = recorded.record, recorded.is_new, recorded.reference
        answer = {
            "enrolment_id": reference,
            "status": status(reference) if reference else "withdrawn" if rec.whole else "unknown",
        }
        return JSONResponse(answer, status_code=201 if is_new else 200)

    return app
