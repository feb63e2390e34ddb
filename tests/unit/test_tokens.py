"""Tokens outside development: expiry parsing, issue/list/revoke/rotate as functions and
through ``diasyndesi token`` (typer's CliRunner) on a temporary SQLite file."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner, Result

from hub.auth import (
    authenticate,
    credentials_version,
    ensure_dev_credentials,
    hash_token,
    token_id_of,
)
from hub.cli import app
from hub.db import CredentialRow, Database, utcnow
from hub.registry import Registry
from hub.schema import upgrade
from hub.tokens import (
    MAX_GRACE,
    TokenError,
    issue_token,
    list_tokens,
    parse_duration,
    revoke_token,
    rotate_token,
)
from tests.databases import fresh_database_url, migrated_database_url

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
    database = Database(fresh_database_url(tmp_path))
    await upgrade(database)
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


# --- the command line -----------------------------------------------------------------


def cli(tmp_path: Path, *args: str) -> Result:
    """``diasyndesi token …`` against a migrated database of its own, through DATABASE_URL."""
    env = {
        "DATABASE_URL": migrated_database_url(tmp_path),
        "VAR_DIR": str(tmp_path),
        "REGISTRY_DIR": str(ROOT / "registry"),
    }
    return CliRunner().invoke(app, ["token", *args], env=env)


async def acli(tmp_path: Path, *args: str) -> Result:
    """The same from an async test (the command runs its own event loop, so a thread)."""
    return await asyncio.to_thread(cli, tmp_path, *args)


def test_cli_issue_prints_the_token_once_on_stdout_and_list_never_shows_it(
    tmp_path: Path,
) -> None:
    issued = cli(tmp_path, "issue", "--centre", "KK-KOZANI", "--expires", "90d", "--label", "app")
    assert issued.exit_code == 0, issued.output
    token = issued.stdout.strip()
    assert token.startswith("dsy_cen_") and "\n" not in token
    token_id = token_id_of(token)
    assert token_id is not None
    assert f"issued token {token_id} for centre KK-KOZANI" in issued.stderr
    assert "Authorization: Bearer $TOKEN" in issued.stderr
    assert token not in issued.stderr

    assert cli(tmp_path, "issue", "--agency", "dypa", "--expires", "12h").exit_code == 0
    assert cli(tmp_path, "issue", "--operator", "maria.k", "--expires", "30m").exit_code == 0

    listed = cli(tmp_path, "list")
    assert listed.exit_code == 0, listed.output
    assert token not in listed.output and hash_token(token) not in listed.output
    assert hash_token(token)[:16] not in listed.output
    lines = listed.stdout.splitlines()
    assert lines[0].split() == [
        "ID", "KIND", "PRINCIPAL", "CREATED", "(UTC)", "EXPIRES", "(UTC)", "STATE", "NOTE"
    ]  # fmt: skip
    assert lines[1].split()[:3] == [token_id, "centre", "KK-KOZANI"]
    assert lines[1].split()[-2:] == ["active", "app"]
    assert "3 token(s)" in listed.stdout
    only = cli(tmp_path, "list", "--agency", "dypa")
    assert [line.split()[2] for line in only.stdout.splitlines()[1:-1]] == ["dypa"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["issue", "--centre", "KK-ATLANTIS"], "no centre 'KK-ATLANTIS' in the registry"),
        (["issue", "--agency", "nasa"], "no agency 'nasa' in the registry"),
        (["issue"], "give one of --centre, --agency or --operator"),
        (["issue", "--centre", "KK-KOZANI", "--agency", "dypa"], "only one of"),
        (["issue", "--centre", "KK-KOZANI", "--expires", "never"], "every token expires"),
        (["issue", "--centre", "KK-KOZANI", "--expires", "2y"], "not a duration"),
        (["revoke", "0000000000"], "no token with id '0000000000'"),
        (["rotate", "0000000000", "--grace", "30d"], "longer than the maximum of 7d"),
    ],
)
def test_cli_errors_are_clear_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = cli(tmp_path, *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stdout == ""


def states(listing: str) -> list[str]:
    """The STATE column of ``token list``."""
    header, *rows = listing.splitlines()[:-1]
    at = header.index("STATE")
    return [row[at : at + 7].strip() for row in rows]


def test_cli_revoke_and_rotate(tmp_path: Path) -> None:
    first = cli(tmp_path, "issue", "--agency", "opeka").stdout.strip()
    first_id = token_id_of(first)
    assert first_id is not None

    rotated = cli(tmp_path, "rotate", first_id, "--expires", "30d", "--grace", "1h")
    assert rotated.exit_code == 0, rotated.output
    second = rotated.stdout.strip()
    second_id = token_id_of(second)
    assert second_id is not None and second_id != first_id
    assert f"token {first_id} keeps working until" in rotated.stderr
    listing = cli(tmp_path, "list").stdout
    assert f"replaced by {second_id}" in listing
    assert states(listing) == ["active", "active"]  # the old one within its grace period

    revoked = cli(tmp_path, "revoke", first_id)
    assert revoked.exit_code == 0 and f"revoked token {first_id} (agency opeka)" in revoked.stdout
    again = cli(tmp_path, "revoke", first_id)
    assert again.exit_code == 0 and "was already revoked" in again.stdout
    assert states(cli(tmp_path, "list").stdout) == ["active"]
    assert states(cli(tmp_path, "list", "--all").stdout) == ["revoked", "active"]

    third = cli(tmp_path, "rotate", second_id)
    assert third.exit_code == 0 and f"token {second_id} is revoked." in third.stderr
    assert cli(tmp_path, "rotate", second_id).exit_code == 2  # a revoked token is not rotated
