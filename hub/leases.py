"""Leases: jobs that exactly one process may do at a time, whatever number of ``serve`` and
``worker`` processes share the database. A lease is a row; taking it is one conditional
UPDATE (or the first INSERT), so SQLite's single writer and PostgreSQL's row locks both
make the race safe. A holder renews by taking it again before it lapses; a holder that died
loses it after ``ttl_s``.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from hub.db import Database, LeaseRow


def process_identity() -> str:
    """Who holds a lease or a claim: readable in the database, unique per process start."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Leases:
    def __init__(self, db: Database, holder: str | None = None, ttl_s: float = 30.0) -> None:
        self.db = db
        self.holder = holder or process_identity()
        self.ttl_s = ttl_s

    async def acquire(self, name: str, ttl_s: float | None = None) -> bool:
        """Take or renew ``name``; False if another live process holds it."""
        now = datetime.now(UTC)
        until = now + timedelta(seconds=ttl_s or self.ttl_s)
        try:
            async with self.db.transaction() as session:
                taken = await session.execute(
                    update(LeaseRow)
                    .where(
                        LeaseRow.name == name,
                        or_(LeaseRow.holder == self.holder, LeaseRow.expires_at < now),
                    )
                    .values(holder=self.holder, expires_at=until)
                )
                if taken.rowcount:  # type: ignore[attr-defined]
                    return True
                if await session.get(LeaseRow, name) is not None:
                    return False
                session.add(LeaseRow(name=name, holder=self.holder, expires_at=until))
        except IntegrityError:  # another process inserted it first
            return False
        return True

    async def release(self, name: str) -> None:
        async with self.db.transaction() as session:
            await session.execute(
                update(LeaseRow)
                .where(LeaseRow.name == name, LeaseRow.holder == self.holder)
                .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )

    async def bump(self, name: str) -> int:
        """Count one more completion of the job (the caller holds the lease)."""
        async with self.db.transaction() as session:
            await session.execute(
                update(LeaseRow)
                .where(LeaseRow.name == name)
                .values(generation=LeaseRow.generation + 1)
            )
            return int(
                await session.scalar(select(LeaseRow.generation).where(LeaseRow.name == name)) or 0
            )

    async def generation(self, name: str) -> int:
        async with self.db.sessions() as session:
            value = await session.scalar(select(LeaseRow.generation).where(LeaseRow.name == name))
        return int(value or 0)
