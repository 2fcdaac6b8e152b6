"""Artifact download counts per version.

``versions.downloads`` is added with a server default of 0, so an existing database
upgrades in place (SQLite's ``ADD COLUMN`` keeps the table and its generation
triggers). The registry adds to it in batches (registry_server.downloads), one
``UPDATE ... SET downloads = downloads + n`` per version touched, never per request.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "versions", sa.Column("downloads", sa.BigInteger(), nullable=False, server_default=sa.text("0"))
    )


def downgrade() -> None:
    with op.batch_alter_table("versions", recreate="never") as batch:
        batch.drop_column("downloads")
