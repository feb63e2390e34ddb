"""Bearer tokens for centres, agencies and operators, stored only as SHA-256 digests.

Tokens are 256-bit random strings, so a plain (unsalted) SHA-256 is enough to make a
stolen database useless for impersonation while keeping lookup a single indexed read.
In embedded mode the dev credentials are written to ``var/dev-credentials.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from sqlalchemy import select

from hub.db import CredentialRow, Database
from hub.registry import Registry

Kind = Literal["centre", "agency", "operator"]
_FILE_KEYS: dict[Kind, str] = {"centre": "centres", "agency": "agencies", "operator": "operators"}


@dataclass(frozen=True)
class Principal:
    kind: Kind
    id: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(kind: Kind) -> str:
    return f"dsy_{kind[:3]}_{secrets.token_urlsafe(32)}"


async def add_credential(db: Database, kind: Kind, principal: str, token: str) -> None:
    async with db.transaction() as session:
        digest = hash_token(token)
        if await session.get(CredentialRow, digest) is None:
            session.add(
                CredentialRow(
                    token_hash=digest, kind=kind, principal=principal, created_at=datetime.now(UTC)
                )
            )


async def authenticate(db: Database, token: str) -> Principal | None:
    async with db.sessions() as session:
        row = (
            await session.execute(
                select(CredentialRow).where(CredentialRow.token_hash == hash_token(token))
            )
        ).scalar_one_or_none()
    if row is None:
        return None
    kind: Kind = row.kind  # type: ignore[assignment]
    return Principal(kind, row.principal)


async def ensure_dev_credentials(
    db: Database, registry: Registry, path: Path
) -> dict[str, dict[str, str]]:
    """Create (or reuse) one token per sample centre, per agency and one operator, write them
    to ``path`` (mode 0600) and make sure the database knows their digests."""
    existing: dict[str, dict[str, str]] = {}
    if path.exists():
        existing = json.loads(path.read_text(encoding="utf-8"))
    wanted: dict[Kind, list[str]] = {
        "centre": list(registry.centres),
        "agency": list(registry.agencies),
        "operator": ["operator"],
    }
    result: dict[str, dict[str, str]] = {}
    for kind, principals in wanted.items():
        section = result.setdefault(_FILE_KEYS[kind], {})
        for principal in principals:
            token = existing.get(_FILE_KEYS[kind], {}).get(principal) or new_token(kind)
            section[principal] = token
            await add_credential(db, kind, principal, token)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return result
