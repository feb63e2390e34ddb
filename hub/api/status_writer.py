"""Agency status pushes, written to the outbox in groups: one transaction per batch.

Status pushes are the API's busiest call (each agency reports ``received`` and then its
decision: six pushes per four-agency referral). One transaction each meant two database
round trips and a commit per push, and SQLite takes one writer at a time, so pushes queued
behind each other. Here a push joins the pending group and awaits its own answer; one
drain task writes whatever has gathered (up to ``max_batch``) in a single transaction: one
query checks that every referral is routed to its agency, signed pushes check and record
their ``webhook-id`` (a replay is answered with the first event id), and the outbox rows
go in one insert. If the group's transaction fails (a concurrent process recorded the same
``webhook-id``, say), each push of the group is retried alone, so one bad push never fails
the others. Nothing is answered before its row is committed.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import insert, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from hub.db import Database, DeliveryRow, WebhookMessageRow
from hub.events import OutgoingRecord
from hub.outbox import TABLES, outbox_values
from schemas.events import STATUS_CHANGED


class NotRouted(Exception):
    """The referral is not routed to the pushing agency."""


class WebhookIdReused(Exception):
    """A ``webhook-id`` seen before came with a different body."""


@dataclass
class StatusPush:
    agency: str
    referral_id: str
    event_id: str
    record: OutgoingRecord
    message_id: str | None = None
    raw: bytes = b""
    answer: asyncio.Future[tuple[str, bool]] = field(init=False)
    """Resolves to (event id, replay absorbed) or to NotRouted / WebhookIdReused."""


class StatusWriter:
    def __init__(self, db: Database, max_batch: int = 200) -> None:
        self.db = db
        self.max_batch = max_batch
        self._pending: list[StatusPush] = []
        self._drain: asyncio.Task[None] | None = None

    async def write(self, push: StatusPush) -> tuple[str, bool]:
        """Queue ``push`` and wait until it is committed (or refused)."""
        push.answer = asyncio.get_running_loop().create_future()
        self._pending.append(push)
        if self._drain is None or self._drain.done():
            self._drain = asyncio.create_task(self._drain_all())
        return await push.answer

    async def _drain_all(self) -> None:
        while self._pending:
            group, self._pending = (
                self._pending[: self.max_batch],
                self._pending[self.max_batch :],
            )
            try:
                await self._write(group)
            except Exception:
                for push in group:  # alone, so one failing push fails only itself
                    try:
                        await self._write([push])
                    except Exception as exc:
                        if not push.answer.done():
                            push.answer.set_exception(exc)

    async def _write(self, group: list[StatusPush]) -> None:
        answers: dict[int, tuple[str, bool] | Exception] = {}
        async with self.db.transaction() as session:
            pairs = {(p.referral_id, p.agency) for p in group}
            found = await session.execute(
                select(DeliveryRow.referral_id, DeliveryRow.agency).where(
                    tuple_(DeliveryRow.referral_id, DeliveryRow.agency).in_(pairs)
                )
            )
            routed = {(referral_id, agency) for referral_id, agency in found}
            rows = []
            seen_here: dict[tuple[str, str], StatusPush] = {}
            for index, push in enumerate(group):
                if (push.referral_id, push.agency) not in routed:
                    answers[index] = NotRouted()
                    continue
                if push.message_id is not None:
                    replay = await self._replay(session, push, seen_here)
                    if replay is not None:
                        answers[index] = replay
                        continue
                rows.append(
                    outbox_values(push.record, push.event_id, STATUS_CHANGED, push.referral_id)
                )
                answers[index] = (push.event_id, False)
            if rows:
                await session.execute(insert(TABLES["outbox"]), rows)
                await self.db.notify_outbox(session)
        for index, push in enumerate(group):
            answer = answers[index]
            if push.answer.done():
                continue
            if isinstance(answer, Exception):
                push.answer.set_exception(answer)
            else:
                push.answer.set_result(answer)

    @staticmethod
    async def _replay(
        session: AsyncSession, push: StatusPush, seen_here: dict[tuple[str, str], StatusPush]
    ) -> tuple[str, bool] | Exception | None:
        """A signed push's ``webhook-id``: None if new (and now recorded), else the answer."""
        assert push.message_id is not None
        digest = hashlib.sha256(push.raw).hexdigest()
        key = (push.message_id, push.agency)
        earlier = seen_here.get(key)
        if earlier is not None:  # the same message twice in one group
            same = hashlib.sha256(earlier.raw).hexdigest() == digest
            return (earlier.event_id, True) if same else WebhookIdReused()
        seen = await session.get(WebhookMessageRow, key)
        if seen is not None:
            return (seen.event_id, True) if seen.body_hash == digest else WebhookIdReused()
        session.add(
            WebhookMessageRow(
                message_id=push.message_id,
                agency=push.agency,
                body_hash=digest,
                event_id=push.event_id,
                received_at=datetime.now(UTC),
            )
        )
        seen_here[key] = push
        return None
