"""The database schema's version: Alembic revisions in ``hub/migrations``.

Development migrates on start; production refuses to start on an unmigrated or older schema
and names the command that fixes it (``diasyndesi db upgrade``), because a migration in
production is a deliberate, separately run step (one process, before the new release).
A database made by ``create_all`` before migrations existed (a development checkout's
``var/``) holds exactly revision 0001's tables and is stamped as such, then upgraded.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from hub.db import Database
from hub.errors import ConfigurationError
from hub.settings import Settings

if TYPE_CHECKING:  # Alembic loads only where the schema is checked or migrated
    from alembic.config import Config

UPGRADE_COMMAND = "diasyndesi db upgrade"
LEGACY_REVISION = "0001"
"""What a pre-migration ``create_all`` database is equal to."""


class SchemaNotCurrent(ConfigurationError):
    """The database is missing, unmigrated or older than this release."""


@dataclass(frozen=True)
class SchemaState:
    current: str | None
    head: str
    legacy: bool = False
    """Tables exist but no Alembic version: made by ``create_all`` before migrations."""

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(files("hub") / "migrations"))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _state(connection: Connection) -> SchemaState:
    from alembic.runtime.migration import MigrationContext

    current = MigrationContext.configure(connection).get_current_revision()
    legacy = current is None and inspect(connection).has_table("referrals")
    return SchemaState(current, head_revision(), legacy)


def _upgrade(connection: Connection) -> None:
    from alembic import command

    config = alembic_config(connection)
    if _state(connection).legacy:
        command.stamp(config, LEGACY_REVISION)
    command.upgrade(config, "head")


async def schema_state(db: Database) -> SchemaState:
    try:
        async with db.engine.connect() as connection:
            return await connection.run_sync(_state)
    except (SQLAlchemyError, OSError) as exc:
        raise _unreachable(db, exc) from None


async def upgrade(db: Database) -> SchemaState:
    """Bring the schema to this release's head; returns the state before. On PostgreSQL an
    advisory lock makes concurrent upgrades (two processes starting) wait for each other.

    On SQLite the migrations run with foreign keys off, as SQLite's own procedure for
    changing a table asks: a table some other table refers to (``referrals``) can only be
    changed by rebuilding it, and dropping the old copy would otherwise fail on every row
    referring to it. Every foreign key is checked before the migrations commit."""
    before = await schema_state(db)
    try:
        async with db.engine.connect() as connection:
            if not db.postgres:
                # only outside a transaction: SQLite ignores the pragma inside one
                await connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
                await connection.commit()
            try:
                async with connection.begin():
                    if db.postgres:
                        await connection.execute(
                            text("SELECT pg_advisory_xact_lock(:key)"), {"key": 2204}
                        )
                    else:
                        # The driver begins SQLite's transaction only before a row is
                        # written, so a migration's first CREATE TABLE would be committed
                        # on its own; beginning here makes all of it one transaction.
                        await connection.exec_driver_sql("BEGIN")
                    await connection.run_sync(_upgrade)
                    if not db.postgres:
                        await connection.run_sync(_check_foreign_keys)
            finally:
                if not db.postgres:
                    await connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                    await connection.commit()
    except (SQLAlchemyError, OSError) as exc:
        raise _unreachable(db, exc) from None
    return before


def _check_foreign_keys(connection: Connection) -> None:
    """SQLite: refuse to commit migrations that left a row referring to nothing."""
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        tables = sorted({str(row[0]) for row in broken})
        raise ConfigurationError(
            f"the migration left rows referring to nothing in {', '.join(tables)}; "
            "nothing was changed"
        )


def _unreachable(db: Database, exc: BaseException) -> ConfigurationError:
    """One line naming the database (password hidden) and the failure's class; the driver's
    message is kept only for connection failures, where it carries no row data."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    reason = str(cause).splitlines()[0][:160] if str(cause) else ""
    return ConfigurationError(
        f"cannot use the database {db.display_url}: {type(cause).__name__}"
        + (f" ({reason})" if reason else "")
    )


async def ensure_schema(db: Database, *, migrate: bool) -> None:
    """Migrate (development) or refuse to run on a schema that is not this release's."""
    if migrate:
        await upgrade(db)
        return
    state = await schema_state(db)
    if state.up_to_date:
        return
    if state.current is None:
        found = "an unmigrated database"
    else:
        found = f"schema revision {state.current}"
    raise SchemaNotCurrent(
        f"{found}; this release needs revision {state.head}: run `{UPGRADE_COMMAND}`"
    )


async def open_database(settings: Settings) -> Database:
    """The hub's database for a command (``dlq``, ``token``): migrated in development (a
    fresh checkout gets an empty one under ``var/``), refused in production unless
    ``diasyndesi db upgrade`` has been run."""
    if not settings.database_url:
        settings.var_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.database)
    try:
        await ensure_schema(db, migrate=settings.environment == "development")
    except BaseException:
        await db.dispose()
        raise
    return db
