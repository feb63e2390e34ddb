"""The database a test gets: a fresh SQLite file by default, or a fresh database on the
PostgreSQL server named by ``TEST_POSTGRES_URL`` (``make test-postgres``), so the same
suite runs on both."""

from __future__ import annotations

import asyncio
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import make_url

POSTGRES = os.environ.get("TEST_POSTGRES_URL", "")


def fresh_database_url(folder: Path, name: str = "hub.db") -> str:
    """A URL of an empty database nobody else uses."""
    if not POSTGRES:
        return f"sqlite+aiosqlite:///{folder / name}"
    database = f"t_{uuid.uuid4().hex[:16]}"
    # Callable from sync code and from inside a running event loop alike.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _create(database)).result()
    return make_url(POSTGRES).set(database=database).render_as_string(hide_password=False)


async def _create(database: str) -> None:
    import asyncpg

    url = make_url(POSTGRES)
    connection = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, database=url.database or "postgres"
    )
    try:
        await connection.execute(f'CREATE DATABASE "{database}"')
    finally:
        await connection.close()


_MIGRATED: dict[Path, str] = {}


def migrated_database_url(folder: Path) -> str:
    """The same database for every call with ``folder``, migrated to this release's schema
    on the first (for commands run several times against one database)."""
    if folder not in _MIGRATED:
        url = fresh_database_url(folder)
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, _upgrade(url)).result()
        _MIGRATED[folder] = url
    return _MIGRATED[folder]


async def _upgrade(url: str) -> None:
    from hub.db import Database
    from hub.schema import upgrade

    db = Database(url)
    try:
        await upgrade(db)
    finally:
        await db.dispose()
