"""Alembic environment: always given a live connection by ``hub.schema`` (never run by the
``alembic`` command with an ini file), so SQLite and PostgreSQL share one code path."""

from __future__ import annotations

from alembic import context

from hub.db import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - a guard for someone running `alembic` by hand
    raise RuntimeError("run migrations with `diasyndesi db upgrade`")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things: batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
