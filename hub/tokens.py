"""Tokens outside development: issue, list, revoke and rotate (``diasyndesi token …``).

Every token names one principal (a centre or agency of the registry, or an operator) and
expires: ``--expires`` takes ``30m``, ``12h``, ``90d`` or ``8w`` up to :data:`MAX_LIFETIME`,
and ``never`` is refused, because a token that never expires outlives the people and
systems that hold it. Only development credentials (``hub/auth.py``) have no expiry, and
production refuses them. The token is returned once; the database keeps its SHA-256
digest, a short id and the dates.

Rotation issues a new token for the same principal and revokes the old one at once, or,
with a grace period, lets the old one expire at the end of it (never later than it would
have anyway), so a client can switch over without an outage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hub.auth import (
    KINDS,
    Kind,
    bump_credentials_version,
    new_token,
    new_token_id,
    store_credential,
)
from hub.db import CredentialRow, Database, utcnow
from hub.registry import Registry
from hub.token_lifetimes import (  # noqa: F401 - re-exported: the token API in one place
    DEFAULT_LIFETIME,
    MAX_GRACE,
    MAX_LIFETIME,
    TokenError,
    days_text,
    parse_duration,
)

_OPERATOR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")

State = Literal["active", "expired", "revoked"]


@dataclass(frozen=True)
class TokenInfo:
    """Everything about a token except the token: safe to list."""

    id: str
    kind: Kind
    principal: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    replaced_by: str | None
    label: str | None

    def state(self, now: datetime | None = None) -> State:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or utcnow()):
            return "expired"
        return "active"

    @classmethod
    def of(cls, row: CredentialRow) -> TokenInfo:
        kind: Kind = row.kind  # type: ignore[assignment]
        return cls(
            row.token_id,
            kind,
            row.principal,
            row.created_at,
            row.expires_at,
            row.revoked_at,
            row.replaced_by,
            row.label,
        )


@dataclass(frozen=True)
class IssuedToken:
    token: str  # shown once, never stored
    info: TokenInfo


def check_principal(registry: Registry, kind: Kind, principal: str) -> None:
    """A centre or agency must be in the registry; an operator name must be plain."""
    if kind not in KINDS:
        raise TokenError(f"unknown token kind {kind!r}")
    if kind == "centre" and principal not in registry.centres:
        raise TokenError(
            f"no centre {principal!r} in the registry (known: {', '.join(registry.centres)})"
        )
    if kind == "agency" and principal not in registry.agencies:
        raise TokenError(
            f"no agency {principal!r} in the registry (known: {', '.join(registry.agencies)})"
        )
    if kind == "operator" and not _OPERATOR.match(principal):
        raise TokenError(
            "an operator name is 1-64 letters, digits, '.', '_', '@' or '-' (e.g. maria.k)"
        )


async def issue_token(
    db: Database,
    registry: Registry,
    kind: Kind,
    principal: str,
    lifetime: timedelta,
    *,
    label: str | None = None,
    now: datetime | None = None,
) -> IssuedToken:
    check_principal(registry, kind, principal)
    if not timedelta(0) < lifetime <= MAX_LIFETIME:
        raise TokenError(f"a token lifetime is between 1 minute and {days_text(MAX_LIFETIME)}")
    now = now or utcnow()
    async with db.transaction() as session:
        token, row = await _store_new(session, kind, principal, now + lifetime, label, now)
    return IssuedToken(token, TokenInfo.of(row))


async def list_tokens(
    db: Database,
    *,
    kind: Kind | None = None,
    principal: str | None = None,
    include_inactive: bool = False,
    now: datetime | None = None,
) -> list[TokenInfo]:
    """Tokens oldest first; only active ones unless ``include_inactive``."""
    now = now or utcnow()
    query = select(CredentialRow).order_by(CredentialRow.created_at, CredentialRow.token_id)
    if kind is not None:
        query = query.where(CredentialRow.kind == kind)
    if principal is not None:
        query = query.where(CredentialRow.principal == principal)
    async with db.sessions() as session:
        rows = (await session.execute(query)).scalars().all()
    tokens = [TokenInfo.of(row) for row in rows]
    if include_inactive:
        return tokens
    return [t for t in tokens if t.state(now) == "active"]


async def revoke_token(
    db: Database, token_id: str, *, now: datetime | None = None
) -> tuple[TokenInfo, bool]:
    """Revoke now; False if it already was (it keeps its first revocation time)."""
    async with db.transaction() as session:
        row = await _by_id(session, token_id)
        if row.revoked_at is not None:
            return TokenInfo.of(row), False
        row.revoked_at = now or utcnow()
        await bump_credentials_version(session)
        return TokenInfo.of(row), True


async def rotate_token(
    db: Database,
    registry: Registry,
    token_id: str,
    lifetime: timedelta,
    *,
    grace: timedelta = timedelta(0),
    now: datetime | None = None,
) -> tuple[IssuedToken, TokenInfo]:
    """A new token for the same principal (same label); the old one is revoked now, or
    with ``grace`` expires then (if it would not expire sooner). Returns (new, old)."""
    if not timedelta(0) < lifetime <= MAX_LIFETIME:
        raise TokenError(f"a token lifetime is between 1 minute and {days_text(MAX_LIFETIME)}")
    if not timedelta(0) <= grace <= MAX_GRACE:
        raise TokenError(f"the grace period is at most {days_text(MAX_GRACE)}")
    now = now or utcnow()
    async with db.transaction() as session:
        old = await _by_id(session, token_id)
        if old.revoked_at is not None:
            raise TokenError(
                f"token {token_id} was revoked; issue a new one with `diasyndesi token issue`"
            )
        kind: Kind = old.kind  # type: ignore[assignment]
        check_principal(registry, kind, old.principal)
        token, new = await _store_new(session, kind, old.principal, now + lifetime, old.label, now)
        old.replaced_by = new.token_id
        if grace:
            end = now + grace
            if old.expires_at is None or old.expires_at > end:
                old.expires_at = end
        else:
            old.revoked_at = now
        return IssuedToken(token, TokenInfo.of(new)), TokenInfo.of(old)


async def _store_new(
    session: AsyncSession,
    kind: Kind,
    principal: str,
    expires_at: datetime,
    label: str | None,
    now: datetime,
) -> tuple[str, CredentialRow]:
    token_id = new_token_id()
    while await session.scalar(select(CredentialRow).where(CredentialRow.token_id == token_id)):
        token_id = new_token_id()  # 40 random bits: a repeat is rare but possible
    token = new_token(kind, token_id)
    row = await store_credential(
        session,
        kind,
        principal,
        token,
        token_id=token_id,
        expires_at=expires_at,
        label=label,
        now=now,
    )
    return token, row


async def _by_id(session: AsyncSession, token_id: str) -> CredentialRow:
    row = await session.scalar(select(CredentialRow).where(CredentialRow.token_id == token_id))
    if row is None:
        raise TokenError(f"no token with id {token_id!r} (see `diasyndesi token list --all`)")
    return row
