"""The system of record: referrals, per-agency delivery state, the outbox, the timeline,
credentials. One SQLAlchemy 2 async code path for SQLite (default) and PostgreSQL.

Only ``referrals.body`` and ``information_requests.summary`` (free text a centre wrote)
may hold personal data; every other column is ids, codes and times.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
    make_url,
    text,
)
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hub.errors import ConfigurationError


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite returns naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class ReferralRow(Base):
    __tablename__ = "referrals"
    __table_args__ = (
        # An Idempotency-Key is its sender's: the centre's, or the referring agency's.
        UniqueConstraint("origin", "idempotency_key", name="uq_referral_origin_idem"),
        # The caseload (``hub/caseload.py``) pages newest first on (created_at, id), over
        # everything (operators), one centre, or one origin.
        Index("ix_referrals_created", "created_at", "id"),
        Index("ix_referrals_centre_created", "centre", "created_at", "id"),
        Index("ix_referrals_origin_created", "origin", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    centre: Mapped[str] = mapped_column(String(32))
    origin: Mapped[str] = mapped_column(String(64))
    """Who referred: the centre's code, or the id of an agency referring a person."""
    municipality: Mapped[str] = mapped_column(String(64))
    caseworker: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    due: Mapped[date] = mapped_column(Date())
    idempotency_key: Mapped[str] = mapped_column(String(200))
    request_hash: Mapped[str] = mapped_column(String(64))
    body: Mapped[dict[str, Any]] = mapped_column(JSON())  # personal data lives only here


class DeliveryRow(Base):
    """One routed (referral, agency) pair: the read model the centre sees."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("referral_id", "agency", name="uq_delivery"),
        Index("ix_delivery_state", "delivery"),
        Index("ix_deliveries_agency", "agency", "referral_id"),
        Index("ix_deliveries_status", "status"),
        Index("ix_deliveries_updated_at", "updated_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    referral_id: Mapped[str] = mapped_column(ForeignKey("referrals.id"), index=True)
    agency: Mapped[str] = mapped_column(String(64))
    delivery: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str | None] = mapped_column(String(32), nullable=True)
    reference: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_class: Mapped[str | None] = mapped_column(String(64), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ReferralProgrammeRow(Base):
    """A programme a referral asked for, written at intake: the caseload filters on it
    without reading ``referrals.body``."""

    __tablename__ = "referral_programmes"
    __table_args__ = (Index("ix_referral_programmes_programme", "programme", "referral_id"),)

    referral_id: Mapped[str] = mapped_column(ForeignKey("referrals.id"), primary_key=True)
    programme: Mapped[str] = mapped_column(String(40), primary_key=True)


class OutboxRow(Base):
    """An encoded record waiting for (or already given to) the broker.

    The event id is fixed here once and reused by every re-publish and re-drive, so the
    idempotency key derived from it never changes.
    """

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(36), index=True)  # repeated by replays
    referral_id: Mapped[str] = mapped_column(String(36), index=True)
    event_type: Mapped[str] = mapped_column(String(64))
    topic: Mapped[str] = mapped_column(String(128))
    key: Mapped[bytes] = mapped_column(LargeBinary())
    headers: Mapped[list[list[str]]] = mapped_column(JSON())
    value: Mapped[bytes] = mapped_column(LargeBinary())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True, index=True)
    publish_count: Mapped[int] = mapped_column(Integer, default=0)
    # A relay claims unsent rows before publishing them, so several `serve` processes never
    # publish one row twice; a claim left by a relay that died lapses at ``claimed_until``.
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class TimelineRow(Base):
    """What happened to a referral, in order; codes and ids only."""

    __tablename__ = "timeline"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    referral_id: Mapped[str] = mapped_column(String(36), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    agency: Mapped[str | None] = mapped_column(String(64), nullable=True)
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text(), nullable=True)


class InformationRequestRow(Base):
    """A beneficiary asked to be informed about a referral (the information duty).

    ``due`` is fixed when the request is recorded (a later registry edit never moves it);
    ``overdue_at`` is the instant its Athens due day ends, so "overdue" is one comparison on
    every backend. ``summary`` is the only free text: it may hold personal data."""

    __tablename__ = "information_requests"
    __table_args__ = (
        Index("ix_information_requests_centre_order", "centre", "requested_at", "id"),
        Index("ix_information_requests_order", "requested_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    referral_id: Mapped[str] = mapped_column(ForeignKey("referrals.id"), index=True)
    centre: Mapped[str] = mapped_column(String(32))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime())
    channel: Mapped[str] = mapped_column(String(16))
    due: Mapped[date] = mapped_column(Date())
    overdue_at: Mapped[datetime] = mapped_column(UTCDateTime())
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    summary: Mapped[str | None] = mapped_column(Text(), nullable=True)  # may be personal data
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    overdue_told_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    """When the centre was told it became overdue (``information_request.overdue``), once."""


class WithdrawalRow(Base):
    """One agency's part of one withdrawal: the programmes it is told of (canonical codes),
    whether its whole referral ends, and whether it acknowledged. The withdrawal's id is its
    event's id (the outbox row); codes and ids only."""

    __tablename__ = "withdrawals"
    __table_args__ = (
        UniqueConstraint("withdrawal_id", "agency", name="uq_withdrawal_agency"),
        Index("ix_withdrawal_state", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    withdrawal_id: Mapped[str] = mapped_column(String(36))
    referral_id: Mapped[str] = mapped_column(ForeignKey("referrals.id"), index=True)
    agency: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(32))
    programmes: Mapped[list[str]] = mapped_column(JSON())
    whole: Mapped[bool] = mapped_column(default=False)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    reference: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_class: Mapped[str | None] = mapped_column(String(100), nullable=True)
    requested_by: Mapped[str] = mapped_column(String(80))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class CentreEventRow(Base):
    """What a centre is told (``hub/centre_events.py``): one row per event, written in the
    transaction of the change that causes it. ``id`` is the event stream's durable cursor
    (SSE ``id:``/``Last-Event-ID``); ``data`` holds ids, codes and times only."""

    __tablename__ = "centre_events"
    __table_args__ = (Index("ix_centre_events_centre_id", "centre", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    centre: Mapped[str] = mapped_column(String(32))
    type: Mapped[str] = mapped_column(String(48))
    referral_id: Mapped[str] = mapped_column(String(36))
    data: Mapped[dict[str, Any]] = mapped_column(JSON())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WebhookRow(Base):
    """A centre's webhook subscription. The signing secret is stored encrypted
    (AES-256-GCM under ``WEBHOOK_SECRET_KEY``, the row's id as associated data): the hub
    must sign with it, so it cannot be a digest, and a copy of the database alone signs
    nothing."""

    __tablename__ = "webhooks"
    __table_args__ = (Index("ix_webhooks_centre", "centre"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    centre: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(JSON())
    secret: Mapped[bytes] = mapped_column(LargeBinary())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WebhookDeliveryRow(Base):
    """One centre event owed to one webhook, and how sending it went: ``pending`` (due at
    ``next_attempt_at``), ``delivered``, ``dead_lettered`` (retried for the whole retry
    window) or ``cancelled`` (the webhook was removed). Claimed like outbox rows."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("webhook_id", "event_id", name="uq_webhook_delivery"),
        Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    webhook_id: Mapped[str] = mapped_column(String(36), index=True)
    centre: Mapped[str] = mapped_column(String(32))
    event_id: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(48))
    referral_id: Mapped[str] = mapped_column(String(36))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class CredentialRow(Base):
    """A bearer token, stored only as its SHA-256 digest. ``token_id`` is the short,
    non-secret name listings and ``token revoke`` use. No expiry (``expires_at`` null) is
    for development credentials only; the API refuses such tokens in production."""

    __tablename__ = "credentials"
    __table_args__ = (
        UniqueConstraint("token_id", name="uq_credentials_token_id"),
        Index("ix_credentials_principal", "kind", "principal"),
    )

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    principal: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    replaced_by: Mapped[str | None] = mapped_column(String(16), nullable=True)
    label: Mapped[str | None] = mapped_column(String(200), nullable=True)


class CredentialsVersionRow(Base):
    """One row (id 1) whose ``version`` goes up in the same transaction as every change to
    ``credentials``; each API process re-reads it at most every half second and drops its
    token cache when it moved (docs/decisions/0010)."""

    __tablename__ = "credentials_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(BigInteger)


def _first_credentials_version(table: Table, connection: Connection, **_: Any) -> None:
    """The one row exists from the start, so a change only ever updates it."""
    connection.execute(table.insert().values(id=1, version=0))


event.listen(CredentialsVersionRow.__table__, "after_create", _first_credentials_version)


class ProcessedEventRow(Base):
    """Event ids the projector has applied, so a redelivered event changes nothing."""

    __tablename__ = "processed_events"

    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(UTCDateTime())


class DeadLetterRow(Base):
    """The operator's view of ``kk.dlq.<connector>``: what was dead-lettered, why, and what
    was done about it. Replays re-publish the stored outbox record (same event id)."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    referral_id: Mapped[str] = mapped_column(String(36), index=True)
    agency: Mapped[str] = mapped_column(String(64), index=True)
    event_id: Mapped[str] = mapped_column(String(36))
    error_class: Mapped[str] = mapped_column(String(100), index=True)
    reason: Mapped[str | None] = mapped_column(Text(), nullable=True)
    permanent: Mapped[bool] = mapped_column(default=False)
    attempts: Mapped[int] = mapped_column(Integer)
    dead_lettered_at: Mapped[datetime] = mapped_column(UTCDateTime())
    replayed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    replayed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    replays: Mapped[int] = mapped_column(Integer, default=0)


class WebhookMessageRow(Base):
    """Signed status messages already accepted, so a replayed ``webhook-id`` is absorbed."""

    __tablename__ = "webhook_messages"

    message_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    agency: Mapped[str] = mapped_column(String(64), primary_key=True)
    body_hash: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(36))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())


class LeaseRow(Base):
    """A named job that one process at a time may do (re-driving after a broker data loss,
    the stale-delivery sweep, polling an agency): held by ``holder`` until ``expires_at``
    and renewed while the holder lives."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Bumped each time the job's holder does it (e.g. recovers from a broker data loss), so
    # the other processes learn that it happened and do their own part (rewind consumers).
    generation: Mapped[int] = mapped_column(Integer, default=0)


OUTBOX_CHANNEL = "diasyndesi_outbox"
"""PostgreSQL NOTIFY channel: a committed outbox row wakes every relay at once."""


class Database:
    """Engine and session factory. The schema is Alembic's (``hub.schema``); ``create_all``
    is only for tests that want the tables without the migration history."""

    def __init__(self, url: str) -> None:
        try:
            parsed = make_url(url)
            # hide_parameters: a failing statement's values (an AMKA, a name) never reach
            # an exception message or a log line.
            self.engine: AsyncEngine = create_async_engine(
                parsed, hide_parameters=True, **_pool_options(parsed.get_backend_name())
            )
        except (ArgumentError, NoSuchModuleError, ImportError) as exc:
            raise ConfigurationError(
                f"DATABASE_URL is not a usable SQLAlchemy async URL ({type(exc).__name__}: "
                "expected sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER:PASSWORD@HOST/DB)"
            ) from None
        self.url = url
        self.dialect = parsed.get_backend_name()
        self.display_url = parsed.render_as_string(hide_password=True)
        self._write_turn: asyncio.Lock | None = None
        self.on_write_wait: Callable[[float], None] | None = None
        """Told how long each SQLite write waited for its turn (seconds); a metric."""
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            self._write_turn = asyncio.Lock()
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @property
    def postgres(self) -> bool:
        return self.dialect == "postgresql"

    async def notify_outbox(self, session: AsyncSession) -> None:
        """Wake every relay when this transaction commits (PostgreSQL; SQLite relays poll)."""
        if self.postgres:
            await session.execute(text(f"NOTIFY {OUTBOX_CHANNEL}"))

    async def create_all(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One unit of work: commits on success, rolls back on any exception.

        On SQLite the process's writers take turns (an asyncio lock): SQLite has one writer
        at a time anyway, and writers that collide inside it wait in its busy handler, which
        sleeps up to 100 ms a try; that was most of the hub's tail latency. Readers (WAL)
        never wait. Never open a transaction inside another one."""
        if self._write_turn is None:
            async with self.sessions() as session, session.begin():
                yield session
            return
        waited = time.perf_counter()
        async with self._write_turn:
            if self.on_write_wait is not None:
                self.on_write_wait(time.perf_counter() - waited)
            async with self.sessions() as session, session.begin():
                yield session

    async def dispose(self) -> None:
        await self.engine.dispose()


def _pool_options(backend: str) -> dict[str, Any]:
    if backend == "postgresql":
        # Connections dropped by a database restart are discarded on first use (SQLAlchemy
        # invalidates the pool on a disconnect error); recycle guards against idle kills.
        return {
            "pool_size": 10,
            "max_overflow": 10,
            "pool_recycle": 1800,
            "pool_timeout": 10,
            "connect_args": {"timeout": 10},
        }
    return {}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers and the single writer overlap; busy_timeout absorbs brief locks."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
