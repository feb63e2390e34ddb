"""Information requests: the beneficiary asked to be informed, the 10-working-day duty
(issue 10, docs/decisions/0016).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 13:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "information_requests",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("referral_id", sa.String(length=36), nullable=False),
        sa.Column("centre", sa.String(length=32), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("due", sa.Date(), nullable=False),
        sa.Column("overdue_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["referral_id"], ["referrals.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("information_requests", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_information_requests_referral_id"), ["referral_id"], unique=False
        )
        batch_op.create_index(
            "ix_information_requests_centre_order",
            ["centre", "requested_at", "id"],
            unique=False,
        )
        batch_op.create_index("ix_information_requests_order", ["requested_at", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("information_requests", schema=None) as batch_op:
        batch_op.drop_index("ix_information_requests_order")
        batch_op.drop_index("ix_information_requests_centre_order")
        batch_op.drop_index(batch_op.f("ix_information_requests_referral_id"))
    op.drop_table("information_requests")
