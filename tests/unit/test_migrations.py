"""The schema is Alembic's: migrations build exactly the models, a pre-migration database is
adopted, production refuses an unmigrated or older schema, and the ``db`` commands give one
clear line. Runs on SQLite and, under ``make test-postgres``, on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from typer.testing import CliRunner

from hub.cli import app
from hub.db import Base, Database
from hub.errors import ConfigurationError
from hub.schema import (
    SchemaNotCurrent,
    alembic_config,
    ensure_schema,
    head_revision,
    schema_state,
    upgrade,
)
from tests.databases import POSTGRES, fresh_database_url


def _diff(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


async def test_migrations_build_exactly_the_models(tmp_path: Path) -> None:
    db = Database(fresh_database_url(tmp_path))
    try:
        await upgrade(db)
        async with db.engine.connect() as connection:
            assert await connection.run_sync(_diff) == []
        state = await schema_state(db)
        assert state.current == state.head == head_revision()
    finally:
        await db.dispose()


async def test_every_migration_goes_down_and_up_again(tmp_path: Path) -> None:
    db = Database(fresh_database_url(tmp_path))
    try:
        await upgrade(db)
        async with db.engine.begin() as connection:
            await connection.run_sync(lambda c: command.downgrade(alembic_config(c), "base"))
        async with db.engine.connect() as connection:
            tables = await connection.run_sync(lambda c: inspect(c).get_table_names())
        assert set(tables) <= {"alembic_version"}
        await upgrade(db)
        assert (await schema_state(db)).up_to_date
    finally:
        await db.dispose()


async def test_production_refuses_an_unmigrated_and_an_older_schema(tmp_path: Path) -> None:
    db = Database(fresh_database_url(tmp_path))
    try:
        with pytest.raises(SchemaNotCurrent, match=r"unmigrated.*run `diasyndesi db upgrade`"):
            await ensure_schema(db, migrate=False)
        async with db.engine.begin() as connection:
            await connection.run_sync(lambda c: command.upgrade(alembic_config(c), "0001"))
        with pytest.raises(SchemaNotCurrent, match=r"revision 0001.*diasyndesi db upgrade"):
            await ensure_schema(db, migrate=False)
        await ensure_schema(db, migrate=True)  # development migrates
        await ensure_schema(db, migrate=False)
    finally:
        await db.dispose()


async def test_a_database_made_before_migrations_is_adopted_with_its_rows(tmp_path: Path) -> None:
    db = Database(fresh_database_url(tmp_path))
    try:
        async with db.engine.begin() as connection:
            await connection.run_sync(lambda c: command.upgrade(alembic_config(c), "0001"))
            await connection.execute(text("DROP TABLE alembic_version"))
            await connection.execute(
                text(
                    "INSERT INTO credentials (token_hash, kind, principal, created_at) "
                    "VALUES ('abc', 'operator', 'op', CURRENT_TIMESTAMP)"
                )
            )
        state = await schema_state(db)
        assert state.legacy and state.current is None
        await upgrade(db)
        assert (await schema_state(db)).up_to_date
        async with db.engine.connect() as connection:
            assert (await connection.execute(text("SELECT principal FROM credentials"))).all() == [
                ("op",)
            ]
    finally:
        await db.dispose()


async def test_an_unreachable_database_is_one_line_without_the_password() -> None:
    db = Database("postgresql+asyncpg://hub:s3cret-pw@127.0.0.1:1/diasyndesi")
    try:
        with pytest.raises(ConfigurationError) as raised:
            await ensure_schema(db, migrate=True)
    finally:
        await db.dispose()
    message = str(raised.value)
    assert "s3cret-pw" not in message
    assert message.startswith("cannot use the database postgresql+asyncpg://hub:***@127.0.0.1:1")
    assert "\n" not in message


def test_a_malformed_database_url_is_refused_by_name() -> None:
    with pytest.raises(ConfigurationError, match="DATABASE_URL is not a usable"):
        Database("postgres://nobody@")
    with pytest.raises(ConfigurationError, match="DATABASE_URL"):
        Database("mysql+nodriver://x/y")


def test_db_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = fresh_database_url(tmp_path)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("VAR_DIR", str(tmp_path))
    runner = CliRunner()
    before = runner.invoke(app, ["db", "current"])
    assert before.exit_code == 1
    assert "revision none" in before.output
    first = runner.invoke(app, ["db", "upgrade"])
    assert first.exit_code == 0, first.output
    assert f"upgraded from empty to revision {head_revision()}" in first.output
    again = runner.invoke(app, ["db", "upgrade"])
    assert "already at revision" in again.output
    assert runner.invoke(app, ["db", "current"]).exit_code == 0

    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://hub:pw-123@127.0.0.1:1/x")
    failed = runner.invoke(app, ["db", "upgrade"])
    assert failed.exit_code == 2
    assert failed.output.count("\n") == 1, failed.output  # one line, no traceback
    assert "pw-123" not in failed.output
    assert "cannot use the database" in failed.output


@pytest.mark.skipif(not POSTGRES, reason="PostgreSQL only: SQLite has no advisory locks")
async def test_two_processes_upgrading_at_once_wait_for_each_other(tmp_path: Path) -> None:
    import asyncio

    url = fresh_database_url(tmp_path)
    first, second = Database(url), Database(url)
    try:
        await asyncio.gather(upgrade(first), upgrade(second))
        assert (await schema_state(first)).up_to_date
    finally:
        await first.dispose()
        await second.dispose()


async def test_0005_gives_existing_referrals_their_origin_and_programmes(tmp_path: Path) -> None:
    """Referrals made before the caseload keep their centre as ``origin`` and get their
    programmes copied from the stored body by the database itself; a body without a list of
    programmes (an erased one, say) is skipped, and going down again keeps every row."""
    import sqlalchemy as sa

    referrals = sa.table(
        "referrals",
        *(sa.column(name) for name in ("id", "centre", "municipality", "caseworker")),
        *(sa.column(name) for name in ("idempotency_key", "request_hash")),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("due", sa.Date()),
        sa.column("body", sa.JSON()),
    )
    deliveries = sa.table(
        "deliveries",
        *(sa.column(name) for name in ("referral_id", "agency", "delivery", "attempts")),
        sa.column("updated_at", sa.DateTime(timezone=True)),
    )
    at = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
    rows = [
        ("r-1", "KK-KOZANI", {"programmes": ["GMI", "SOCIAL_GROCERY"], "notes": "x"}),
        ("r-2", "KK-EORDAIA", {"programmes": ["UNEMPLOYMENT_REGISTRATION"]}),
        ("r-3", "KK-FLORINA", {"erased": True}),
    ]
    db = Database(fresh_database_url(tmp_path))
    try:
        async with db.engine.begin() as connection:
            await connection.run_sync(lambda c: command.upgrade(alembic_config(c), "0003"))
            for referral_id, centre, body in rows:
                await connection.execute(
                    referrals.insert().values(
                        id=referral_id,
                        centre=centre,
                        municipality="m",
                        caseworker="sw-1",
                        idempotency_key=referral_id,
                        request_hash="h",
                        created_at=at,
                        due=date(2026, 12, 4),
                        body=body,
                    )
                )
            await connection.execute(  # a foreign key into referrals, as every referral has
                deliveries.insert().values(
                    referral_id="r-1", agency="opeka", delivery="pending", attempts=0, updated_at=at
                )
            )
            await connection.run_sync(lambda c: command.upgrade(alembic_config(c), "0005"))
        async with db.engine.connect() as connection:
            origins = (await connection.execute(text("SELECT id, origin FROM referrals"))).all()
            programmes = (
                await connection.execute(
                    text("SELECT referral_id, programme FROM referral_programmes")
                )
            ).all()
        assert sorted(origins) == [
            ("r-1", "KK-KOZANI"),
            ("r-2", "KK-EORDAIA"),
            ("r-3", "KK-FLORINA"),
        ]
        assert sorted(programmes) == [
            ("r-1", "GMI"),
            ("r-1", "SOCIAL_GROCERY"),
            ("r-2", "UNEMPLOYMENT_REGISTRATION"),
        ]
        async with db.engine.begin() as connection:
            await connection.run_sync(lambda c: command.downgrade(alembic_config(c), "0003"))
        async with db.engine.connect() as connection:
            count = (await connection.execute(text("SELECT count(*) FROM referrals"))).scalar()
        assert count == 3
    finally:
        await db.dispose()


async def test_0008_makes_idempotency_keys_per_origin_and_keeps_every_row(
    tmp_path: Path,
) -> None:
    """Existing referrals (with rows referring to them, as every referral has) survive the
    change of the unique constraint, which SQLite makes by rebuilding the table; afterwards
    two origins may use one key for the same centre, and one origin may not use it twice."""
    import sqlalchemy as sa
    from sqlalchemy.exc import IntegrityError

    columns = ("id", "centre", "origin", "municipality", "caseworker")
    referrals = sa.table(
        "referrals",
        *(sa.column(name) for name in columns),
        *(sa.column(name) for name in ("idempotency_key", "request_hash")),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("due", sa.Date()),
        sa.column("body", sa.JSON()),
    )
    deliveries = sa.table(
        "deliveries",
        *(sa.column(name) for name in ("referral_id", "agency", "delivery", "attempts")),
        sa.column("updated_at", sa.DateTime(timezone=True)),
    )
    at = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)

    def referral(referral_id: str, origin: str, key: str) -> Any:
        return referrals.insert().values(
            id=referral_id,
            centre="KK-KOZANI",
            origin=origin,
            municipality="kozani",
            caseworker="sw-1",
            idempotency_key=key,
            request_hash="h",
            created_at=at,
            due=date(2026, 12, 4),
            body={"programmes": ["GMI"]},
        )

    db = Database(fresh_database_url(tmp_path))
    try:
        async with db.engine.begin() as connection:
            await connection.run_sync(lambda c: command.upgrade(alembic_config(c), "0006"))
            await connection.execute(referral("r-1", "KK-KOZANI", "k"))
            await connection.execute(
                deliveries.insert().values(
                    referral_id="r-1", agency="opeka", delivery="pending", attempts=0, updated_at=at
                )
            )
        await upgrade(db)
        assert (await schema_state(db)).up_to_date
        async with db.engine.begin() as connection:
            await connection.execute(referral("r-2", "dypa", "k"))  # same centre, same key
            await connection.execute(referral("r-3", "opeka", "k"))
        with pytest.raises(IntegrityError):
            async with db.engine.begin() as connection:
                await connection.execute(referral("r-4", "dypa", "k"))
        async with db.engine.connect() as connection:
            kept = (
                await connection.execute(text("SELECT referral_id, agency FROM deliveries"))
            ).all()
            count = (await connection.execute(text("SELECT count(*) FROM referrals"))).scalar()
            if not POSTGRES:
                enforced = (await connection.exec_driver_sql("PRAGMA foreign_keys")).scalar()
                assert enforced == 1  # back on for whoever uses the connection next
        assert kept == [("r-1", "opeka")]
        assert count == 3
    finally:
        await db.dispose()


@pytest.mark.skipif(bool(POSTGRES), reason="SQLite only: its migrations run with foreign keys off")
async def test_sqlite_migrations_that_leave_a_dangling_row_change_nothing(tmp_path: Path) -> None:
    """A row referring to no referral (possible in a SQLite file whose foreign keys were once
    off) makes the upgrade refuse, as one transaction: no half-rebuilt table is left behind,
    the revision is unchanged, and foreign keys are on again."""
    db = Database(fresh_database_url(tmp_path))
    try:
        async with db.engine.begin() as connection:
            await connection.run_sync(lambda c: command.upgrade(alembic_config(c), "0006"))
        async with db.engine.connect() as connection:
            await connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            await connection.commit()
            await connection.execute(
                text(
                    "INSERT INTO deliveries (referral_id, agency, delivery, attempts, updated_at)"
                    " VALUES ('ghost', 'dypa', 'pending', 0, CURRENT_TIMESTAMP)"
                )
            )
            await connection.commit()
            await connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            await connection.commit()
        with pytest.raises(ConfigurationError, match="referring to nothing in deliveries"):
            await upgrade(db)
        assert (await schema_state(db)).current == "0006"
        async with db.engine.connect() as connection:
            tables = await connection.run_sync(lambda c: inspect(c).get_table_names())
            enforced = (await connection.exec_driver_sql("PRAGMA foreign_keys")).scalar()
        assert not [t for t in tables if t.startswith("_alembic_tmp")]
        assert enforced == 1
    finally:
        await db.dispose()
