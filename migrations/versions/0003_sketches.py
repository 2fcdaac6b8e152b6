"""Interference sketches of skill versions (``tvreg check``).

``versions`` gains the sketch's digest and size (null: published without a sketch),
and ``sketches`` holds the bytes, one row per version, deleted with it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("versions") as batch:
        batch.add_column(sa.Column("sketch_digest", sa.String(71), nullable=True))
        batch.add_column(sa.Column("sketch_size", sa.BigInteger(), nullable=True))
    op.create_table(
        "sketches",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("sketch_version", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"], ["versions.id"], name=op.f("fk_sketches_version_id_versions"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("version_id", name=op.f("pk_sketches")),
    )


def downgrade() -> None:
    op.drop_table("sketches")
    with op.batch_alter_table("versions") as batch:
        batch.drop_column("sketch_size")
        batch.drop_column("sketch_digest")
