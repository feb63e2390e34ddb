"""The caseload: who referred (``referrals.origin``), the programmes each referral asked for
(``referral_programmes``), and the indexes ``GET /v1/referrals`` pages and filters on.

Existing referrals were all made by their centre, so ``origin`` is the centre. Their
programmes are copied by the database itself from the one non-personal field of the stored
body (``$.programmes``, a list of catalogue codes): the migration never reads a body into
Python, and the names, identifiers and notes beside it are never selected.

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-01 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

_COPY_PROGRAMMES = {
    "sqlite": """
        INSERT INTO referral_programmes (referral_id, programme)
        SELECT DISTINCT r.id, p.value
        FROM referrals AS r, json_each(r.body, '$.programmes') AS p
        WHERE json_type(r.body, '$.programmes') = 'array'
    """,
    "postgresql": """
        INSERT INTO referral_programmes (referral_id, programme)
        SELECT DISTINCT r.id, p.value
        FROM referrals AS r
        CROSS JOIN LATERAL json_array_elements_text(
            CASE WHEN json_typeof(r.body -> 'programmes') = 'array'
                 THEN r.body -> 'programmes' ELSE '[]'::json END
        ) AS p(value)
    """,
}


def upgrade() -> None:
    op.create_table(
        "referral_programmes",
        sa.Column("referral_id", sa.String(length=36), nullable=False),
        sa.Column("programme", sa.String(length=40), nullable=False),
        sa.ForeignKeyConstraint(["referral_id"], ["referrals.id"]),
        sa.PrimaryKeyConstraint("referral_id", "programme"),
    )
    with op.batch_alter_table("referral_programmes", schema=None) as batch_op:
        batch_op.create_index(
            "ix_referral_programmes_programme", ["programme", "referral_id"], unique=False
        )
    op.execute(_COPY_PROGRAMMES[op.get_bind().dialect.name])

    # A column that is NOT NULL from the start (every backend can add one with a default),
    # filled, and then stripped of the default: SQLite could otherwise only tighten it by
    # copying the table, which its foreign keys from ``deliveries`` forbid mid-transaction.
    op.add_column(
        "referrals",
        sa.Column("origin", sa.String(length=64), nullable=False, server_default=""),
    )
    op.execute("UPDATE referrals SET origin = centre")
    with op.batch_alter_table("referrals", schema=None) as batch_op:
        if op.get_bind().dialect.name != "sqlite":
            batch_op.alter_column("origin", existing_type=sa.String(length=64), server_default=None)
        batch_op.drop_index("ix_referrals_centre")
        batch_op.create_index("ix_referrals_created", ["created_at", "id"], unique=False)
        batch_op.create_index(
            "ix_referrals_centre_created", ["centre", "created_at", "id"], unique=False
        )
        batch_op.create_index(
            "ix_referrals_origin_created", ["origin", "created_at", "id"], unique=False
        )

    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_deliveries_agency", ["agency", "referral_id"], unique=False)
        batch_op.create_index("ix_deliveries_status", ["status"], unique=False)
        batch_op.create_index("ix_deliveries_updated_at", ["updated_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_updated_at")
        batch_op.drop_index("ix_deliveries_status")
        batch_op.drop_index("ix_deliveries_agency")

    with op.batch_alter_table("referrals", schema=None) as batch_op:
        batch_op.drop_index("ix_referrals_origin_created")
        batch_op.drop_index("ix_referrals_centre_created")
        batch_op.drop_index("ix_referrals_created")
        batch_op.create_index("ix_referrals_centre", ["centre"], unique=False)
    op.drop_column("referrals", "origin")

    with op.batch_alter_table("referral_programmes", schema=None) as batch_op:
        batch_op.drop_index("ix_referral_programmes_programme")
    op.drop_table("referral_programmes")
