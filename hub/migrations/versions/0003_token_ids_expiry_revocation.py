"""Tokens outside development: ids, expiry, revocation, rotation, and the credentials
version each API process watches to drop its token cache (docs/decisions/0010).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 08:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    version = op.create_table(
        "credentials_version",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(version, [{"id": 1, "version": 0}])
    with op.batch_alter_table("credentials", schema=None) as batch_op:
        batch_op.add_column(sa.Column("token_id", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("replaced_by", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("label", sa.String(length=200), nullable=True))
    # Only development credentials can exist before this revision: they keep no expiry.
    op.execute("UPDATE credentials SET token_id = substr(token_hash, 1, 10), label = 'development'")
    with op.batch_alter_table("credentials", schema=None) as batch_op:
        batch_op.alter_column("token_id", existing_type=sa.String(length=16), nullable=False)
        batch_op.create_unique_constraint("uq_credentials_token_id", ["token_id"])
        batch_op.create_index("ix_credentials_principal", ["kind", "principal"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("credentials", schema=None) as batch_op:
        batch_op.drop_index("ix_credentials_principal")
        batch_op.drop_constraint("uq_credentials_token_id", type_="unique")
        batch_op.drop_column("label")
        batch_op.drop_column("replaced_by")
        batch_op.drop_column("revoked_at")
        batch_op.drop_column("expires_at")
        batch_op.drop_column("token_id")
    op.drop_table("credentials_version")
