"""Withdrawals: one row per (withdrawal, agency), what the agency is told and whether it
acknowledged (docs/decisions/0019-withdrawal.md). Self-contained: one new table.

Revision ID: 0006
Revises: 0003
Create Date: 2026-12-01 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "withdrawals",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("withdrawal_id", sa.String(length=36), nullable=False),
        sa.Column("referral_id", sa.String(length=36), nullable=False),
        sa.Column("agency", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("programmes", sa.JSON(), nullable=False),
        sa.Column("whole", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("reference", sa.String(length=64), nullable=True),
        sa.Column("error_class", sa.String(length=100), nullable=True),
        sa.Column("requested_by", sa.String(length=80), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["referral_id"], ["referrals.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("withdrawal_id", "agency", name="uq_withdrawal_agency"),
    )
    op.create_index("ix_withdrawal_state", "withdrawals", ["state"], unique=False)
    op.create_index(
        op.f("ix_withdrawals_referral_id"), "withdrawals", ["referral_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_withdrawals_referral_id"), table_name="withdrawals")
    op.drop_index("ix_withdrawal_state", table_name="withdrawals")
    op.drop_table("withdrawals")
