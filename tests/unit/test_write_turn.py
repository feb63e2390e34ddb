"""SQLite writers take turns; each write reports how long it waited for its turn."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text

from hub.db import Database


async def test_each_write_reports_its_wait_for_the_turn(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'turns.db'}")
    waits: list[float] = []
    db.on_write_wait = waits.append
    holding = asyncio.Event()
    try:

        async def first() -> None:
            async with db.transaction() as session:
                await session.execute(text("CREATE TABLE t (x INTEGER)"))
                holding.set()
                await asyncio.sleep(0.2)  # the second writer waits for this turn

        async def second() -> None:
            await holding.wait()
            async with db.transaction() as session:
                await session.execute(text("INSERT INTO t VALUES (1)"))

        await asyncio.gather(first(), second())
    finally:
        await db.dispose()
    assert len(waits) == 2
    assert waits[0] < 0.1
    assert waits[1] >= 0.1  # it queued behind the first writer's whole transaction
