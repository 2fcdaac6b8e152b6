"""Web pages: browser sessions signed in with a token, and skill cards (README.md) per version.

``web_sessions`` keeps only the SHA-256 of the session cookie, the token it was signed in
with (a revoked or expired token ends its sessions, checked on every lookup) and the
session's CSRF secret. ``cards`` holds a version's Markdown card, replaceable by a writer.
Both tables bump ``registry_state.generation`` like the tables of 0004, so a sign-out on
one replica or a new card is seen by the next request on every replica.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

WATCHED = ("web_sessions", "cards")
_BUMP = "UPDATE registry_state SET generation = generation + 1 WHERE id = 1"


def upgrade() -> None:
    op.create_table(
        "web_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_hash", sa.String(64), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["token_id"], ["tokens.id"], name=op.f("fk_web_sessions_token_id_tokens"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_web_sessions")),
        sa.UniqueConstraint("session_hash", name=op.f("uq_web_sessions_session_hash")),
    )
    op.create_index(op.f("ix_web_sessions_token_id"), "web_sessions", ["token_id"])
    op.create_index(op.f("ix_web_sessions_expires_at"), "web_sessions", ["expires_at"])
    op.create_table(
        "cards",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("digest", sa.String(71), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"], ["versions.id"], name=op.f("fk_cards_version_id_versions"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("version_id", name=op.f("pk_cards")),
    )
    if op.get_bind().dialect.name == "postgresql":
        for table in WATCHED:
            op.execute(
                f"CREATE CONSTRAINT TRIGGER tr_{table}_generation AFTER INSERT OR UPDATE OR DELETE "
                f"ON {table} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
                "EXECUTE FUNCTION tvreg_bump_generation()"
            )
        return
    for table in WATCHED:
        for event in ("insert", "update", "delete"):
            op.execute(
                f"CREATE TRIGGER tr_{table}_generation_{event} AFTER {event.upper()} ON {table} "
                f"BEGIN {_BUMP}; END"
            )


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table in WATCHED:
        if postgres:
            op.execute(f"DROP TRIGGER tr_{table}_generation ON {table}")
        else:
            for event in ("insert", "update", "delete"):
                op.execute(f"DROP TRIGGER tr_{table}_generation_{event}")
    op.drop_table("cards")
    op.drop_table("web_sessions")
