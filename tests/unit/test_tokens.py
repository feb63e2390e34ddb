"""Tokens outside development: expiry parsing, issue/list/revoke/rotate as functions on a
temporary SQLite file."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from hub.auth import (
    authenticate,
    credentials_version,
    ensure_dev_credentials,
    hash_token,
    token_id_of,
)
from hub.db import CredentialRow, Database, utcnow
from hub.registry import Registry
from hub.tokens import (
    MAX_GRACE,
    TokenError,
    issue_token,
    list_tokens,
    parse_duration,
    revoke_token,
    rotate_token,
)

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = Registry.load(ROOT / "registry")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", timedelta(minutes=30)),
        ("12h", timedelta(hours=12)),
        ("90d", timedelta(days=90)),
        (" 90D ", timedelta(days=90)),
        ("8w", timedelta(weeks=8)),
        ("365d", timedelta(days=365)),
        ("1m", timedelta(minutes=1)),
    ],
)
def test_parses_a_lifetime(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("never", "every token expires"),
        ("0d", "longer than zero"),
        ("0", "not a duration"),
        ("366d", "maximum of 365d"),
        ("53w", "maximum of 365d"),
        ("5y", "not a duration"),
        ("1.5h", "not a duration"),
        ("-1d", "not a duration"),
        ("", "not a duration"),
    ],
)
def test_refuses_a_lifetime(text: str, reason: str) -> None:
    with pytest.raises(TokenError, match=reason):
        parse_duration(text)


def test_a_grace_period_may_be_zero_and_is_short() -> None:
    assert parse_duration("0", maximum=MAX_GRACE, allow_zero=True) == timedelta(0)
    assert parse_duration("1h", maximum=MAX_GRACE, allow_zero=True) == timedelta(hours=1)
    with pytest.raises(TokenError, match="maximum of 7d"):
        parse_duration("8d", maximum=MAX_GRACE, allow_zero=True)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'diasyndesi.db'}")
    await database.create_all()
    yield database
    await database.dispose()


async def test_issue_stores_the_digest_and_the_token_names_its_id(db: Database) -> None:
    issued = await issue_token(db, REGISTRY, "centre", "KK-KOZANI", timedelta(days=90))
    assert issued.token.startswith(f"dsy_cen_{issued.info.id}_")
    assert token_id_of(issued.token) == issued.info.id
    assert issued.info.expires_at is not None
    assert issued.info.expires_at - issued.info.created_at == timedelta(days=90)
    async with db.sessions() as session:
        rows = (await session.execute(select(CredentialRow))).scalars().all()
    assert [(r.token_hash, r.kind, r.principal) for r in rows] == [
        (hash_token(issued.token), "centre", "KK-KOZANI")
    ]
    assert issued.token not in json.dumps([str(vars(r)) for r in rows])
    principal = await authenticate(db, issued.token, allow_unexpiring=False)
    assert principal is not None and (principal.kind, principal.id) == ("centre", "KK-KOZANI")


@pytest.mark.parametrize(
    ("kind", "principal", "message"),
    [
        ("centre", "KK-ATLANTIS", "no centre 'KK-ATLANTIS' in the registry"),
        ("agency", "nasa", "no agency 'nasa' in the registry"),
        ("operator", "maria k; drop table", "an operator name is"),
    ],
)
async def test_issue_refuses_a_principal_the_registry_does_not_know(
    db: Database, kind: str, principal: str, message: str
) -> None:
    with pytest.raises(TokenError, match=message):
        await issue_token(db, REGISTRY, kind, principal, timedelta(days=1))  # type: ignore[arg-type]


async def test_every_change_moves_the_version(db: Database) -> None:
    seen = [await credentials_version(db)]
    issued = await issue_token(db, REGISTRY, "agency", "dypa", timedelta(days=1))
    seen.append(await credentials_version(db))
    await rotate_token(db, REGISTRY, issued.info.id, timedelta(days=1), grace=timedelta(hours=1))
    seen.append(await credentials_version(db))
    await revoke_token(db, issued.info.id)
    seen.append(await credentials_version(db))
    assert seen[0] == 0 and seen == sorted(set(seen))
    _, revoked_now = await revoke_token(db, issued.info.id)
    assert not revoked_now
    assert await credentials_version(db) == seen[-1]  # nothing changed, nothing to clear


async def test_expired_and_revoked_tokens_are_refused_and_listed_as_such(db: Database) -> None:
    now = utcnow()
    expired = await issue_token(
        db, REGISTRY, "centre", "KK-FLORINA", timedelta(hours=1), now=now - timedelta(hours=2)
    )
    revoked = await issue_token(db, REGISTRY, "centre", "KK-FLORINA", timedelta(days=1))
    active = await issue_token(db, REGISTRY, "agency", "opeka", timedelta(days=1), label="soap")
    info, changed = await revoke_token(db, revoked.info.id)
    assert changed and info.state() == "revoked"

    assert await authenticate(db, expired.token) is None
    assert await authenticate(db, revoked.token) is None
    assert await authenticate(db, active.token) is not None

    assert [t.id for t in await list_tokens(db)] == [active.info.id]
    every = await list_tokens(db, include_inactive=True)
    assert {t.id: t.state() for t in every} == {
        expired.info.id: "expired",
        revoked.info.id: "revoked",
        active.info.id: "active",
    }
    florina = await list_tokens(db, kind="centre", principal="KK-FLORINA", include_inactive=True)
    assert {t.id for t in florina} == {expired.info.id, revoked.info.id}
    assert (await list_tokens(db, kind="agency"))[0].label == "soap"


async def test_rotate_revokes_the_old_token_at_once_by_default(db: Database) -> None:
    old = await issue_token(db, REGISTRY, "operator", "maria.k", timedelta(days=30), label="ops")
    new, before = await rotate_token(db, REGISTRY, old.info.id, timedelta(days=90))
    assert (new.info.kind, new.info.principal, new.info.label) == ("operator", "maria.k", "ops")
    assert new.token != old.token and new.info.id != old.info.id
    assert before.state() == "revoked" and before.replaced_by == new.info.id
    assert await authenticate(db, old.token) is None
    assert await authenticate(db, new.token) is not None
    with pytest.raises(TokenError, match="was revoked"):
        await rotate_token(db, REGISTRY, old.info.id, timedelta(days=1))
    with pytest.raises(TokenError, match="no token with id"):
        await rotate_token(db, REGISTRY, "0000000000", timedelta(days=1))


async def test_rotate_with_grace_keeps_the_old_token_until_then_never_longer(
    db: Database,
) -> None:
    now = utcnow()
    old = await issue_token(db, REGISTRY, "agency", "dypa", timedelta(days=30), now=now)
    _, before = await rotate_token(
        db, REGISTRY, old.info.id, timedelta(days=90), grace=timedelta(hours=1), now=now
    )
    assert before.state() == "active" and before.expires_at == now + timedelta(hours=1)
    assert await authenticate(db, old.token) is not None
    assert before.state(now + timedelta(hours=1, seconds=1)) == "expired"

    soon = await issue_token(db, REGISTRY, "agency", "dypa", timedelta(minutes=10), now=now)
    _, before = await rotate_token(
        db, REGISTRY, soon.info.id, timedelta(days=1), grace=timedelta(days=7), now=now
    )
    assert before.expires_at == now + timedelta(minutes=10)  # the grace never extends a life


async def test_dev_credentials_never_expire_but_only_development_accepts_them(
    db: Database, tmp_path: Path
) -> None:
    path = tmp_path / "dev-credentials.json"
    creds = await ensure_dev_credentials(db, REGISTRY, path)
    token = creds["centres"]["KK-KOZANI"]
    assert await authenticate(db, token, allow_unexpiring=True) is not None
    assert await authenticate(db, token, allow_unexpiring=False) is None
    listed = {t.principal: t for t in await list_tokens(db, kind="centre")}
    assert listed["KK-KOZANI"].expires_at is None
    assert listed["KK-KOZANI"].label == "development"

    again = await ensure_dev_credentials(db, REGISTRY, path)
    assert again == creds  # reused, not re-issued

    await revoke_token(db, listed["KK-KOZANI"].id)
    renewed = await ensure_dev_credentials(db, REGISTRY, path)
    assert renewed["centres"]["KK-KOZANI"] != token  # a revoked one is replaced
    assert renewed["centres"]["KK-FLORINA"] == creds["centres"]["KK-FLORINA"]
    assert await authenticate(db, renewed["centres"]["KK-KOZANI"], allow_unexpiring=True)
