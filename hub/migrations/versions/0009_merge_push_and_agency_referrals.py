"""Joins the two revisions made after 0006 in parallel: 0007 (push to centres) and 0008
(Idempotency-Keys per origin). Neither depends on the other; each keeps its own
``down_revision``, so a database already at either one upgrades by applying the other.
Changes nothing itself.

Revision ID: 0009
Revises: 0007, 0008
Create Date: 2026-12-02 12:00:00
"""

from __future__ import annotations

revision: str = "0009"
down_revision: tuple[str, ...] | None = ("0007", "0008")
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
