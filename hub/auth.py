"""Bearer tokens for centres, agencies and operators, stored only as SHA-256 digests.

Tokens are 256-bit random strings, so a plain (unsalted) SHA-256 is enough to make a
stolen database useless for impersonation while keeping lookup a single indexed read.
A token reads ``dsy_<kind>_<id>_<secret>``: the id is the short, non-secret name that
listings show and ``diasyndesi token revoke`` takes, so a token found in a log can be
revoked without looking anything up.

Every change to the ``credentials`` table goes through :func:`store_credential` or bumps
the version with :func:`bump_credentials_version` in the same transaction; API processes
watch that version to drop their token caches (``hub/api/token_cache.py``).
Issuing, listing, revoking and rotating live in ``hub/tokens.py``. In embedded mode the dev
credentials are written to ``var/dev-credentials.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from hub.db import CredentialRow, CredentialsVersionRow, Database, utcnow
from hub.registry import Registry

Kind = Literal["centre", "agency", "operator"]
KINDS: tuple[Kind, ...] = ("centre", "agency", "operator")
_FILE_KEYS: dict[Kind, str] = {"centre": "centres", "agency": "agencies", "operator": "operators"}
_TOKEN_ID = re.compile(r"^dsy_[a-z]{3}_([0-9a-f]{10})_")
DEV_LABEL = "development"


@dataclass(frozen=True)
class Principal:
    kind: Kind
    id: str


@dataclass(frozen=True)
class Credential:
    """What a valid token stands for, and until when (``None``: no expiry)."""

    principal: Principal
    expires_at: datetime | None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token_id() -> str:
    return secrets.token_hex(5)


def new_token(kind: Kind, token_id: str) -> str:
    return f"dsy_{kind[:3]}_{token_id}_{secrets.token_urlsafe(32)}"


def token_id_of(token: str) -> str | None:
    """The id a token carries (``None`` for tokens minted before ids existed)."""
    match = _TOKEN_ID.match(token)
    return match.group(1) if match else None


def usable(row: CredentialRow, now: datetime, *, allow_unexpiring: bool) -> bool:
    """Not revoked and not expired. A token without expiry is a development credential:
    production (``allow_unexpiring=False``) refuses it."""
    if row.revoked_at is not None:
        return False
    if row.expires_at is None:
        return allow_unexpiring
    return row.expires_at > now


async def lookup_credential(
    db: Database, digest: str, *, allow_unexpiring: bool
) -> Credential | None:
    """The credential of a token digest if it may be used now; one indexed read."""
    async with db.sessions() as session:
        row = await session.get(CredentialRow, digest)
    if row is None or not usable(row, utcnow(), allow_unexpiring=allow_unexpiring):
        return None
    kind: Kind = row.kind  # type: ignore[assignment]
    return Credential(Principal(kind, row.principal), row.expires_at)


async def authenticate(
    db: Database, token: str, *, allow_unexpiring: bool = False
) -> Principal | None:
    """Uncached lookup (the API goes through its token cache instead); by default with the
    production rule that every token expires."""
    credential = await lookup_credential(db, hash_token(token), allow_unexpiring=allow_unexpiring)
    return credential.principal if credential else None


async def credentials_version(db: Database) -> int:
    """The counter every credentials change moves; 0 before the first change."""
    async with db.sessions() as session:
        version = await session.scalar(
            select(CredentialsVersionRow.version).where(CredentialsVersionRow.id == 1)
        )
    return int(version or 0)


async def bump_credentials_version(session: AsyncSession) -> None:
    """Move the version in the caller's transaction, so readers see the change and the new
    version together. The row is created with the table; the insert is only a fallback for
    a database where it is missing."""
    result = await session.execute(
        update(CredentialsVersionRow)
        .where(CredentialsVersionRow.id == 1)
        .values(version=CredentialsVersionRow.version + 1)
    )
    if getattr(result, "rowcount", 0) == 0:
        session.add(CredentialsVersionRow(id=1, version=1))
        await session.flush()


async def store_credential(
    session: AsyncSession,
    kind: Kind,
    principal: str,
    token: str,
    *,
    token_id: str,
    expires_at: datetime | None,
    label: str | None = None,
    now: datetime | None = None,
) -> CredentialRow:
    row = CredentialRow(
        token_hash=hash_token(token),
        token_id=token_id,
        kind=kind,
        principal=principal,
        created_at=now or utcnow(),
        expires_at=expires_at,
        label=label,
    )
    session.add(row)
    await bump_credentials_version(session)
    return row


async def ensure_dev_credentials(
    db: Database, registry: Registry, path: Path
) -> dict[str, dict[str, str]]:
    """Create (or reuse) one token per sample centre, per agency and one operator, write them
    to ``path`` (mode 0600) and make sure the database knows their digests.

    Development credentials never expire (production refuses tokens without expiry); one
    that was revoked or has expired is replaced by a new one."""
    existing: dict[str, dict[str, str]] = {}
    if path.exists():
        existing = json.loads(path.read_text(encoding="utf-8"))
    wanted: dict[Kind, list[str]] = {
        "centre": list(registry.centres),
        "agency": list(registry.agencies),
        "operator": ["operator"],
    }
    result: dict[str, dict[str, str]] = {}
    now = utcnow()
    async with db.transaction() as session:
        for kind, principals in wanted.items():
            section = result.setdefault(_FILE_KEYS[kind], {})
            for principal in principals:
                token = existing.get(_FILE_KEYS[kind], {}).get(principal)
                row = await session.get(CredentialRow, hash_token(token)) if token else None
                if token and row is not None and usable(row, now, allow_unexpiring=True):
                    section[principal] = token
                    continue
                if token is None or row is not None:  # none yet, or revoked/expired
                    token = new_token(kind, new_token_id())
                token_id = token_id_of(token) or new_token_id()
                await store_credential(
                    session,
                    kind,
                    principal,
                    token,
                    token_id=token_id,
                    expires_at=None,
                    label=DEV_LABEL,
                    now=now,
                )
                section[principal] = token
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return result
