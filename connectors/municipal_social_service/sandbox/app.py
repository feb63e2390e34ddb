"""Sandbox of the municipal social services (Kozani, Karpenisi, ...): REST/JSON whose every
request and status push is signed per Standard Webhooks with the municipality's secret.

One server hosts every municipality under its own path prefix (``/{agency_id}/...``), as a
shared municipal IT platform would; each municipality has its own secret, ledger, case
numbers, fault knobs and pusher, so one can fail while another works. The signed
``webhook-id`` is the idempotency key: it is covered by the signature, so nobody in between
can swap it. A repeated id with the same body answers 200 with the first case; with another
body it is refused with 409, since the hub must never reuse an id for different content.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from connectors.sandbox_kit import (
    FaultKnobs,
    Faults,
    IdempotencyKeyReused,
    ReceivedRecord,
    SandboxLedger,
    StatusPusher,
    add_sandbox_routes,
    announce_withdrawal,
    apply_faults,
    error_response,
    quiet_fastapi,
    request_object,
    utc_now,
    withdrawal_fields,
)
from diasyndesi_sdk.webhooks import WebhookError, decode_secret, sign, verify

__all__ = ["SERVICES", "MunicipalSandboxConfig", "create_app", "push_headers"]

SERVICES = frozenset(
    {
        "HELP_AT_HOME",
        "HOMELESS_SHELTER",
        "HOMELESS_DAY_CENTRE",
        "ELDERLY_DAY_CARE",
        "DISABILITY_DAY_CARE",
        "PSYCHOSOCIAL_SUPPORT",
        "LEARNING_SUPPORT",
    }
)
MAX_MESSAGE_ID = 255
MAX_NOTES = 4000


class MunicipalSandboxConfig(BaseModel):
    """Settings of the municipal sandbox; one signing secret (``whsec_...``) per agency id."""

    model_config = ConfigDict(extra="forbid")

    secrets: dict[str, SecretStr] = Field(min_length=1)
    hub_url: str | None = None
    hub_tokens: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="optional bearer per agency, sent beside the signature on status pushes",
    )
    decision_delay_s: float = Field(default=2.0, ge=0.0)
    decision: str = "accepted"
    state_dir: Path | None = Field(
        default=None, description="one JSON-lines ledger per agency: {state_dir}/{agency}.jsonl"
    )
    tolerance_s: int = Field(default=300, gt=0)

    @field_validator("secrets")
    @classmethod
    def _secrets_decode(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for agency, secret in value.items():
            if not agency or "/" in agency:
                raise ValueError("agency ids must be non-empty path segments")
            try:
                decode_secret(secret.get_secret_value())
            except WebhookError:
                raise ValueError(f"{agency}: signing secret is not a whsec_ secret") from None
        return value


def case_prefix(agency: str) -> str:
    """``kozani-social-service`` numbers its cases ``KOZ-SS-<year>-<n>``."""
    return f"{agency[:3].upper()}-SS"


def push_headers(secret: str) -> Callable[[bytes], dict[str, str]]:
    """Signed headers for a status push; the id is derived from the body, so a retried push
    (same body, same ``occurred_at``) carries the same id and the hub can absorb it."""

    def headers_for(body: bytes) -> dict[str, str]:
        msg_id = "msg_" + hashlib.sha256(body).hexdigest()[:32]
        return sign(secret, msg_id, time.time(), body)

    return headers_for


def _invalid(body: dict[str, Any]) -> list[dict[str, str]]:
    """Field-level problems of a case request (names and rules only, never values)."""
    errors: list[dict[str, str]] = []
    referral_id = body.get("hub_referral_id")
    if not isinstance(referral_id, str) or not referral_id:
        errors.append({"field": "hub_referral_id", "message": "required non-empty string"})
    services = body.get("services")
    if not isinstance(services, list) or not services or not set(services) <= SERVICES:
        errors.append({"field": "services", "message": "non-empty list of service codes"})
    flags = body.get("vulnerabilities", [])
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        errors.append({"field": "vulnerabilities", "message": "list of strings"})
    notes = body.get("notes")
    if notes is not None and (not isinstance(notes, str) or len(notes) > MAX_NOTES):
        errors.append({"field": "notes", "message": f"string of at most {MAX_NOTES} chars"})
    return errors


class _Municipality:
    """One municipal social service: its secret, ledger, faults, pusher and routes."""

    def __init__(self, agency: str, config: MunicipalSandboxConfig) -> None:
        self.agency = agency
        self.secret = config.secrets[agency].get_secret_value()
        self.config = config
        state_dir = config.state_dir
        self.ledger = SandboxLedger(state_dir / f"{agency}.jsonl" if state_dir else None)
        self.faults = Faults()
        token = config.hub_tokens.get(agency)
        self.pusher = StatusPusher(
            agency,
            config.hub_url,
            token.get_secret_value() if token else None,
            headers_for=push_headers(self.secret),
            journal=state_dir / f"{agency}.pushes.jsonl" if state_dir else None,
        )
        self.app = quiet_fastapi(title=f"{agency} sandbox (municipal social service)")
        self.app.state.ledger = self.ledger
        self.app.state.faults = self.faults
        self.app.state.pusher = self.pusher
        add_sandbox_routes(self.app, self.ledger, self.faults)
        self.app.add_api_route(
            "/api/v1/referrals", self.open_case, methods=["POST"], status_code=201
        )
        self.app.add_api_route("/api/v1/referrals/{case_number}", self.case, methods=["GET"])
        self.app.add_api_route("/api/v1/webhooks", self.webhook, methods=["POST"], status_code=201)

    def _verified(self, request: Request, body: bytes) -> str | JSONResponse:
        try:
            return verify(self.secret, request.headers, body, tolerance_s=self.config.tolerance_s)
        except WebhookError as exc:
            return error_response(401, "invalid_signature", reason=exc.reason)

    async def open_case(self, request: Request) -> Response:
        """Open a social-service case for a referred citizen; idempotent per ``webhook-id``."""
        await request.body()  # the whole request first: a real agency keeps working on it
        # even when the caller disconnects mid-call (a SIGKILLed worker), so faults come after
        key = request.headers.get("webhook-id")
        if (fault := await apply_faults(self.faults, key=key)) is not None:
            return fault
        raw = await request.body()
        msg_id = self._verified(request, raw)
        if isinstance(msg_id, JSONResponse):
            return msg_id
        if len(msg_id) > MAX_MESSAGE_ID:
            return error_response(400, "message_id_too_long")
        key = request.headers.get("idempotency-key")
        if key is not None and key != msg_id:
            return error_response(400, "idempotency_key_mismatch")
        body = request_object(raw)
        if isinstance(body, JSONResponse):
            return body
        if errors := _invalid(body):
            return error_response(422, "validation_failed", errors=errors)
        prefix, year = case_prefix(self.agency), utc_now().year
        try:
            rec, is_new = self.ledger.record(
                msg_id, body["hub_referral_id"], body, lambda n: f"{prefix}-{year}-{n:05d}"
            )
        except IdempotencyKeyReused:
            return error_response(409, "webhook_id_reused")
        assert rec.reference is not None
        if self.ledger.withdrawn_at(msg_id) is not None:  # withdrawn first: born closed
            answer = {"case_number": rec.reference, "status": "withdrawn"}
            self.pusher.answer_once(rec.referral_id, rec.reference, [(0.0, "withdrawn")])
            return JSONResponse(answer, status_code=201 if is_new else 200)
        answer = {"case_number": rec.reference, "status": "received"}
        self.pusher.answer_once(
            rec.referral_id,
            rec.reference,
            [(0.0, "received"), (self.config.decision_delay_s, self.config.decision)],
        )
        return JSONResponse(answer, status_code=201 if is_new else 200)

    async def webhook(self, request: Request) -> Response:
        """Events from the hub, signed like every call: ``referral.withdrawn`` closes the
        case opened (or to be opened) under ``data.case_key``, or drops some services;
        idempotent per ``webhook-id`` (another body under the same id: 409). One for a
        case not received yet is kept (journalled): that case is born closed."""
        await request.body()
        key = request.headers.get("webhook-id")
        if (fault := await apply_faults(self.faults, key=key)) is not None:
            return fault
        raw = await request.body()
        msg_id = self._verified(request, raw)
        if isinstance(msg_id, JSONResponse):
            return msg_id
        if len(msg_id) > MAX_MESSAGE_ID:
            return error_response(400, "message_id_too_long")
        body = request_object(raw)
        if isinstance(body, JSONResponse):
            return body
        if body.get("type") != "referral.withdrawn" or not isinstance(body.get("data"), dict):
            return error_response(422, "unknown_event_type")
        fields = withdrawal_fields(
            body["data"], key="case_key", referral="hub_referral_id", programmes="services"
        )
        if isinstance(fields, JSONResponse):
            return fields
        try:
            rec, is_new = self.ledger.withdraw(msg_id, **fields)
        except IdempotencyKeyReused:
            return error_response(409, "webhook_id_reused")
        delay = self.config.decision_delay_s
        number = announce_withdrawal(self.pusher, self.ledger, rec, is_new, delay)
        original = self.ledger.get(rec.delivery_key)
        state = (
            self.status_of(original)
            if original is not None
            else ("withdrawn" if rec.whole else "unknown")
        )
        answer = {"case_number": number, "status": state}
        return JSONResponse(answer, status_code=201 if is_new else 200)

    async def case(self, case_number: str, request: Request) -> Response:
        """Current status of one case; the (empty-bodied) request is signed like any other."""
        if (fault := await apply_faults(self.faults)) is not None:
            return fault
        verified = self._verified(request, await request.body())
        if isinstance(verified, JSONResponse):
            return verified
        rec = self.ledger.by_reference(case_number)
        if rec is None:
            return error_response(404, "not_found")
        return JSONResponse({"case_number": case_number, "status": self.status_of(rec)})

    def status_of(self, rec: ReceivedRecord) -> str:
        # From time, not push success: the decision is taken whether or not the hub hears.
        if self.ledger.withdrawn_at(rec.idempotency_key) is not None:
            return "withdrawn"
        decided = utc_now() - rec.received_at >= timedelta(seconds=self.config.decision_delay_s)
        return self.config.decision if decided else "received"


def create_app(config: MunicipalSandboxConfig) -> FastAPI:
    """Build the sandbox; ``app.state.municipalities`` maps agency id to its ``app.state``."""
    municipalities = {agency: _Municipality(agency, config) for agency in config.secrets}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Mounted apps get no lifespan of their own: open and close every pusher here.
        for m in municipalities.values():
            await m.pusher.start()
        try:
            yield
        finally:
            for m in municipalities.values():
                await m.pusher.close()

    app = quiet_fastapi(title="Municipal social services sandbox", lifespan=lifespan)
    app.state.municipalities = {agency: m.app.state for agency, m in municipalities.items()}

    @app.get("/_sandbox/received", tags=["sandbox"])
    async def received_all() -> list[dict[str, Any]]:
        """Every municipality's calls, each tagged with its ``agency``."""
        return [
            {**entry, "agency": agency}
            for agency, m in municipalities.items()
            for entry in m.ledger.received()
        ]

    @app.get("/_sandbox/withdrawals", tags=["sandbox"])
    async def withdrawals_all() -> list[dict[str, Any]]:
        """Every municipality's withdrawal calls, each tagged with its ``agency``."""
        return [
            {**entry, "agency": agency}
            for agency, m in municipalities.items()
            for entry in m.ledger.withdrawals()
        ]

    @app.get("/_sandbox/stats", tags=["sandbox"])
    async def stats_all() -> dict[str, int]:
        """Totals over all municipalities (per agency: ``/{agency}/_sandbox/stats``)."""
        totals = {"received": 0, "accepted": 0, "duplicates": 0}
        for m in municipalities.values():
            for name, count in m.ledger.stats().items():
                totals[name] += count
        return totals

    @app.get("/_sandbox/faults", tags=["sandbox"])
    async def faults_all() -> dict[str, dict[str, Any]]:
        return {agency: m.faults.describe() for agency, m in municipalities.items()}

    @app.post("/_sandbox/faults", tags=["sandbox"])
    async def set_faults_all(knobs: FaultKnobs) -> dict[str, dict[str, Any]]:
        """Set the same knobs on every municipality (one at a time: ``/{agency}/_sandbox``)."""
        for m in municipalities.values():
            m.faults.set(knobs)
        return {agency: m.faults.describe() for agency, m in municipalities.items()}

    @app.post("/_sandbox/reset", tags=["sandbox"])
    async def reset_all() -> dict[str, int]:
        for m in municipalities.values():
            m.ledger.reset()
        return await stats_all()

    for agency, m in municipalities.items():
        app.mount(f"/{agency}", m.app)
    return app
