"""Sandbox of the employment service (ΔΥΠΑ): REST/JSON behind OAuth2 client credentials.

It behaves like the real registry would towards the hub's connector: tokens that expire,
its own idempotency (a repeat key answers 200 with the first answer; a reused key with a
different body is refused like Stripe does), its own registration numbers, status queries,
and status pushed back to the hub — `received` at once, the decision after a delay.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, unquote_plus

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ConfigDict, Field

from connectors.sandbox_kit import (
    IdempotencyKeyReused,
    NonEmptySecret,
    PushingSandboxConfig,
    ReceivedRecord,
    apply_faults,
    error_response,
    record_withdrawal,
    request_object,
    sandbox_app,
    utc_now,
)

__all__ = ["EmploymentSandboxConfig", "create_app"]

MAX_IDEMPOTENCY_KEY = 255


class EmploymentSandboxConfig(PushingSandboxConfig):
    """Settings of one ΔΥΠΑ sandbox; secrets are `SecretStr` so they never show in reprs."""

    model_config = ConfigDict(extra="forbid")

    client_id: str = "diasyndesi"
    client_secret: NonEmptySecret
    agency_id: str = "dypa"
    decision: str = "accepted"
    token_ttl_s: int = Field(default=3600, gt=0)


class _TokenIssuer:
    """Opaque bearer tokens in memory: a restarted registry forgets them, as real ones do."""

    def __init__(self, client_id: str, client_secret: str, ttl_s: int) -> None:
        self._client_id = client_id.encode()
        self._client_secret = client_secret.encode()
        self.ttl_s = ttl_s
        self._expiry: dict[str, float] = {}

    def client_ok(self, client_id: str, client_secret: str) -> bool:
        id_ok = secrets.compare_digest(client_id.encode(), self._client_id)
        secret_ok = secrets.compare_digest(client_secret.encode(), self._client_secret)
        return id_ok and secret_ok

    def issue(self) -> str:
        now = time.monotonic()
        for token in [t for t, exp in self._expiry.items() if exp <= now]:
            del self._expiry[token]
        token = secrets.token_urlsafe(32)
        self._expiry[token] = now + self.ttl_s
        return token

    def valid(self, authorization: str | None) -> bool:
        if not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        expiry = self._expiry.get(token.strip())
        return expiry is not None and expiry > time.monotonic()


def _client_credentials(request: Request, form: dict[str, str]) -> tuple[str, str] | None:
    """Client id and secret from HTTP Basic (preferred) or the form (RFC 6749 §2.3.1)."""
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        client_id, sep, client_secret = decoded.partition(":")
        if not sep:
            return None
        return unquote_plus(client_id), unquote_plus(client_secret)
    if "client_id" in form and "client_secret" in form:
        return form["client_id"], form["client_secret"]
    return None


def _missing_referral_id(body: dict[str, Any]) -> JSONResponse | None:
    value = body.get("hub_referral_id")
    if isinstance(value, str) and value:
        return None
    return error_response(
        422,
        "validation_failed",
        errors=[{"field": "hub_referral_id", "message": "required non-empty string"}],
    )


def create_app(config: EmploymentSandboxConfig) -> FastAPI:
    """Build the ΔΥΠΑ sandbox; `app.state` exposes ledger, faults and pusher to tests."""
    parts = sandbox_app("ΔΥΠΑ sandbox (employment service)", config)
    app, ledger, faults, pusher = parts.app, parts.ledger, parts.faults, parts.pusher
    tokens = _TokenIssuer(
        config.client_id, config.client_secret.get_secret_value(), config.token_ttl_s
    )
    decision_delay = timedelta(seconds=config.decision_delay_s)

    def registration_status(rec: ReceivedRecord) -> str:
        # Derived from time, not from push success: the decision happens whether or not
        # the hub hears about it, and a restarted registry still answers consistently.
        if ledger.withdrawn_at(rec.idempotency_key) is not None:
            return "withdrawn"
        decided = utc_now() - rec.received_at >= decision_delay
        return config.decision if decided else "received"

    def unauthorized() -> JSONResponse:
        headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        return error_response(401, "invalid_token", headers=headers)

    @app.post("/oauth/token", tags=["oauth"])
    async def issue_token(request: Request) -> Response:
        """OAuth2 client credentials grant (RFC 6749 §4.4), form-encoded body."""
        raw = parse_qs((await request.body()).decode("utf-8", "replace"))
        form = {key: values[0] for key, values in raw.items()}
        creds = _client_credentials(request, form)
        if creds is None or not tokens.client_ok(*creds):
            headers = {"WWW-Authenticate": 'Basic realm="dypa"'}
            return error_response(401, "invalid_client", headers=headers)
        grant = form.get("grant_type")
        if grant is None:
            return error_response(
                400, "invalid_request", error_description="grant_type is required"
            )
        if grant != "client_credentials":
            return error_response(400, "unsupported_grant_type")
        return JSONResponse(
            {"access_token": tokens.issue(), "token_type": "Bearer", "expires_in": tokens.ttl_s},
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    @app.post("/api/v1/registrations", tags=["registrations"], status_code=201)
    async def register(request: Request) -> Response:
        """Register a referred citizen as unemployed; idempotent per `Idempotency-Key`."""
        await request.body()  # the whole request first: a real agency keeps working on it
        # even when the caller disconnects mid-call (a SIGKILLed worker), so faults come after
        key = request.headers.get("idempotency-key", "").strip()
        if (fault := await apply_faults(faults, key=key or None)) is not None:
            return fault
        if not tokens.valid(request.headers.get("authorization")):
            return unauthorized()
        if not key or len(key) > MAX_IDEMPOTENCY_KEY:
            return error_response(400, "missing_idempotency_key")
        body = request_object(await request.body())
        if isinstance(body, JSONResponse):
            return body
        if (invalid := _missing_referral_id(body)) is not None:
            return invalid
        year = utc_now().year
        try:
            rec, is_new = ledger.record(
                key, body["hub_referral_id"], body, lambda n: f"DYPA-{year}-{n:06d}"
            )
        except IdempotencyKeyReused:
            return error_response(422, "idempotency_key_reused")
        assert rec.reference is not None
        if ledger.withdrawn_at(key) is not None:  # withdrawn before it came: born withdrawn
            answer = {"registration_number": rec.reference, "status": "withdrawn"}
            pusher.answer_once(rec.referral_id, rec.reference, [(0.0, "withdrawn")])
            return JSONResponse(answer, status_code=201 if is_new else 200)
        answer = {"registration_number": rec.reference, "status": "received"}
        pusher.answer_once(
            rec.referral_id,
            rec.reference,
            [(0.0, "received"), (config.decision_delay_s, config.decision)],
        )
        return JSONResponse(answer, status_code=201 if is_new else 200)

    @app.post("/api/v1/registrations/withdrawals", tags=["registrations"], status_code=201)
    async def withdraw(request: Request) -> Response:
        """Withdraw the registration requested under ``registration_key``, whole or some
        programmes; idempotent per ``Idempotency-Key``. A withdrawal of a registration not
        received yet is kept (journalled): that registration is born withdrawn."""
        await request.body()
        key = request.headers.get("idempotency-key", "").strip()
        if (fault := await apply_faults(faults, key=key or None)) is not None:
            return fault
        if not tokens.valid(request.headers.get("authorization")):
            return unauthorized()
        if not key or len(key) > MAX_IDEMPOTENCY_KEY:
            return error_response(400, "missing_idempotency_key")
        recorded = record_withdrawal(
            await request.body(),
            key,
            ledger,
            pusher,
            config.decision_delay_s,
            key="registration_key",
            referral="hub_referral_id",
            programmes="programmes",
        )
        if isinstance(recorded, JSONResponse):
            return recorded
        rec, is_new, number = recorded.record, recorded.is_new, recorded.reference
        original = ledger.get(rec.delivery_key)
        state = (
            registration_status(original)
            if original is not None
            else ("withdrawn" if rec.whole else "unknown")
        )
        answer = {"registration_number": number, "status": state}
        return JSONResponse(answer, status_code=201 if is_new else 200)

    @app.get("/api/v1/registrations/{registration_number}", tags=["registrations"])
    async def registration(registration_number: str, request: Request) -> Response:
        """Current status of one registration, for a hub that polls instead of listening."""
        if (fault := await apply_faults(faults)) is not None:
            return fault
        if not tokens.valid(request.headers.get("authorization")):
            return unauthorized()
        rec = ledger.by_reference(registration_number)
        if rec is None:
            return error_response(404, "not_found")
        return JSONResponse(
            {"registration_number": registration_number, "status": registration_status(rec)}
        )

    return app
