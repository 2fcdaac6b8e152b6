"""Failed token checks per client address, shared by every replica (registry_server.ratelimit).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "auth_failures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("address", sa.String(100), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_failures")),
    )
    op.create_index("ix_auth_failures_address_at", "auth_failures", ["address", "at"])
    op.create_index(op.f("ix_auth_failures_at"), "auth_failures", ["at"])


def downgrade() -> None:
    op.drop_table("auth_failures")
