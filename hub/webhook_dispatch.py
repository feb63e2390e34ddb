"""Calling centres' webhooks: the dispatcher ``serve`` runs, supervised.

The calls owed are rows of ``webhook_deliveries``, written with the centre event that
causes them (``hub/centre_events.py``), so a restart loses none. Each round claims the due
rows, like the relay claims outbox rows: one UPDATE over the oldest due, unclaimed rows (on
PostgreSQL selected ``FOR UPDATE SKIP LOCKED``, so several ``serve`` processes take
disjoint rows; SQLite's single writer serialises it); a claim left by a process that died
lapses. Each call:

- is a POST of ``{"type", "timestamp", "event_id", "referral_id", "data"}`` signed per
  Standard Webhooks with the subscription's secret; ``webhook-id`` is ``evt_<event id>``,
  the same on every retry, so the receiver can drop a repeat;
- follows no redirect, has a total timeout (``PUSH__WEBHOOK_TIMEOUT_S``), and shares one
  bounded connection pool (``PUSH__WEBHOOK_CONCURRENCY``); in production it connects only
  to public addresses (``hub/webhook_secrets.py``);
- succeeds on any 2xx; anything else is tried again after a doubling wait
  (``PUSH__WEBHOOK_INITIAL_S`` up to ``PUSH__WEBHOOK_MAX_S``) until it has failed for
  ``PUSH__WEBHOOK_RETRY_FOR_S`` (26 h by default), then is dead-lettered: operators list it
  (``GET /v1/ops/webhook-deliveries?state=dead_lettered``) and
  ``diasyndesi_webhook_deliveries_total{outcome="dead_lettered"}`` counts it.

Logs and rows carry ids, HTTP statuses and error classes only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from sqlalchemy import or_, select, update

from diasyndesi_sdk.webhooks import sign
from hub.db import CentreEventRow, Database, WebhookDeliveryRow, WebhookRow
from hub.leases import process_identity
from hub.logs import get_logger
from hub.metrics import HubMetrics
from hub.settings import PushSettings
from hub.webhook_secrets import PublicResolver, RefusedAddress, check_url, unseal

log = get_logger(__name__)

CLAIM_MARGIN_S = 30.0


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    status: int | None = None
    error: str | None = None


class WebhookDispatcher:
    def __init__(
        self,
        db: Database,
        settings: PushSettings,
        metrics: HubMetrics,
        key: bytes | None,
        *,
        production: bool = False,
    ) -> None:
        self.db = db
        self.settings = settings
        self.metrics = metrics
        self.key = key
        self.production = production
        self.holder = process_identity()
        self._stopping = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.settings.webhook_concurrency,
            limit_per_host=max(1, self.settings.webhook_concurrency // 4),
            resolver=PublicResolver() if self.production else None,
        )
        timeout = aiohttp.ClientTimeout(total=self.settings.webhook_timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self._session = session
            while not self._stopping.is_set():
                if await self.dispatch_once() == 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), self.settings.webhook_poll_s)

    async def dispatch_once(self) -> int:
        """Claim the due calls and make them; returns how many were made."""
        claimed = await self._claim()
        if not claimed:
            return 0
        async with self.db.sessions() as session:
            hooks = {
                row.id: row
                for row in (
                    await session.execute(
                        select(WebhookRow).where(WebhookRow.id.in_({c.webhook_id for c in claimed}))
                    )
                ).scalars()
            }
            events = {
                row.id: row
                for row in (
                    await session.execute(
                        select(CentreEventRow).where(
                            CentreEventRow.id.in_({c.event_id for c in claimed})
                        )
                    )
                ).scalars()
            }
        outcomes = await asyncio.gather(
            *(self._call(hooks.get(c.webhook_id), events.get(c.event_id)) for c in claimed)
        )
        await self._record(claimed, outcomes)
        return len(claimed)

    async def _claim(self) -> list[Any]:
        now = datetime.now(UTC)
        due = (
            select(WebhookDeliveryRow.id)
            .where(
                WebhookDeliveryRow.state == "pending",
                WebhookDeliveryRow.next_attempt_at <= now,
                or_(
                    WebhookDeliveryRow.claimed_until.is_(None),
                    WebhookDeliveryRow.claimed_until < now,
                ),
            )
            .order_by(WebhookDeliveryRow.next_attempt_at, WebhookDeliveryRow.id)
            .limit(self.settings.webhook_concurrency)
            .with_for_update(skip_locked=True)
        )
        until = now + timedelta(seconds=self.settings.webhook_timeout_s + CLAIM_MARGIN_S)
        async with self.db.transaction() as session:
            claimed = await session.execute(
                update(WebhookDeliveryRow)
                .where(WebhookDeliveryRow.id.in_(due.scalar_subquery()))
                .values(claimed_by=self.holder, claimed_until=until)
                .returning(
                    WebhookDeliveryRow.id,
                    WebhookDeliveryRow.webhook_id,
                    WebhookDeliveryRow.event_id,
                    WebhookDeliveryRow.attempts,
                    WebhookDeliveryRow.created_at,
                )
                .execution_options(synchronize_session=False)
            )
            return sorted(claimed.all(), key=lambda row: row.id)

    async def _call(self, hook: WebhookRow | None, event: CentreEventRow | None) -> Outcome:
        if hook is None or event is None:
            return Outcome(False, error="gone")
        assert self._session is not None
        try:
            check_url(hook.url, self.production)  # a literal address skips the resolver
            if self.key is None:
                return Outcome(False, error="no_secret_key")
            secret = unseal(self.key, hook.id, hook.secret)
        except RefusedAddress:
            return Outcome(False, error="address_refused")
        except Exception:  # a key that changed: the secret cannot be read
            return Outcome(False, error="secret_unreadable")
        body = json.dumps(
            {
                "type": event.type,
                "timestamp": event.created_at.isoformat(),
                "event_id": event.id,
                "referral_id": event.referral_id,
                "data": event.data,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()
        headers = sign(secret, f"evt_{event.id}", time.time(), body)
        headers["content-type"] = "application/json"
        try:
            async with self._session.post(
                hook.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                await response.content.read(4096)  # a little of the answer, then let go
                return Outcome(200 <= response.status < 300, status=response.status)
        except TimeoutError:
            return Outcome(False, error="timeout")
        except aiohttp.ClientError as exc:
            return Outcome(False, error=type(exc).__name__[:64])
        except OSError:  # the resolver refused a non-public address, or the network did
            return Outcome(False, error="connection_refused")

    async def _record(self, claimed: list[Any], outcomes: list[Outcome]) -> None:
        now = datetime.now(UTC)
        retry_for = timedelta(seconds=self.settings.webhook_retry_for_s)
        async with self.db.transaction() as session:
            for row, outcome in zip(claimed, outcomes, strict=True):
                attempts = row.attempts + 1
                values: dict[str, Any] = {
                    "attempts": attempts,
                    "last_status": outcome.status,
                    "last_error": outcome.error,
                    "updated_at": now,
                    "claimed_by": None,
                    "claimed_until": None,
                }
                if outcome.delivered:
                    values["state"] = "delivered"
                    result = "delivered"
                elif outcome.error == "gone":
                    values["state"] = "cancelled"
                    result = "cancelled"
                elif now - row.created_at >= retry_for:
                    values["state"] = "dead_lettered"
                    result = "dead_lettered"
                else:
                    values["next_attempt_at"] = now + timedelta(seconds=self.backoff_s(attempts))
                    result = "retrying"
                await session.execute(
                    update(WebhookDeliveryRow)
                    .where(
                        WebhookDeliveryRow.id == row.id,
                        WebhookDeliveryRow.claimed_by == self.holder,
                        WebhookDeliveryRow.state == "pending",
                    )
                    .values(**values)
                )
                self.metrics.webhook_deliveries.labels(result).inc()
                if result != "delivered":
                    log.info(
                        "webhook call failed",
                        delivery_id=row.id,
                        webhook_id=row.webhook_id,
                        outcome=result,
                        status=outcome.status,
                        error=outcome.error,
                        attempts=attempts,
                    )

    def backoff_s(self, attempts: int) -> float:
        """The wait after the ``attempts``-th failure: doubling, capped, 10 % jitter."""
        wait: float = min(
            self.settings.webhook_initial_s * 2.0 ** min(attempts - 1, 40),
            self.settings.webhook_max_s,
        )
        return wait * (1 + random.random() / 10)  # spreading retries, not secrecy
