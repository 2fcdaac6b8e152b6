"""Per-namespace storage quotas and per-user open-upload limits set by ``tvreg-server admin set-quota``.

NULL means the server's default (``--namespace-quota``, ``--max-open-uploads``). Plain
``ADD COLUMN``s: SQLite keeps the tables (and migration 0004's triggers) as they are.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("namespaces", sa.Column("storage_quota", sa.BigInteger(), nullable=True))
    op.add_column("users", sa.Column("max_open_uploads", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("max_open_uploads")
    with op.batch_alter_table("namespaces") as batch:
        batch.drop_column("storage_quota")
