"""Idempotency-Keys per origin: unique on (origin, idempotency_key) instead of (centre,
idempotency_key), now that an agency may refer a person to a centre
(docs/decisions/0021-referrals-between-agencies.md). Every existing referral was made by
its centre (``origin`` = ``centre``), so the new constraint holds for every existing row.

SQLite cannot drop a table's constraint: the table is rebuilt (batch mode), which
``hub.schema.upgrade`` allows by running migrations with SQLite's foreign keys off and
checking them all before it commits.

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-02 09:00:00
"""

from __future__ import annotations

from alembic import op

revision: str = "0008"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.drop_constraint("uq_referral_idem", type_="unique")
        batch_op.create_unique_constraint("uq_referral_origin_idem", ["origin", "idempotency_key"])


def downgrade() -> None:
    # Fails if two origins used one key for the same centre: such referrals must not be
    # folded into one, so going down then needs a decision about them first.
    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.drop_constraint("uq_referral_origin_idem", type_="unique")
        batch_op.create_unique_constraint("uq_referral_idem", ["centre", "idempotency_key"])
