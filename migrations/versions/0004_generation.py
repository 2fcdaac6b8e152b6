"""A registry-wide change counter, bumped by the database itself on every change a read can see.

``registry_state`` holds one row whose ``generation`` grows whenever a row of a table
that search, info or authentication read is inserted, updated or deleted, in the same
transaction as the change. Replicas cache read answers under the generation they read
first (registry_server.readcache), so a change committed through any replica, or by
``tvreg-server admin``, is visible to the next request everywhere.

Triggers rather than application code, so no write path can forget. On PostgreSQL they
are deferred constraint triggers: the counter row is locked at commit, after every
other lock a transaction takes, so it cannot deadlock with them. (On SQLite a later
migration that rebuilds one of these tables with ``batch_alter_table`` must create its
triggers again.)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Tables whose rows a cached answer may depend on; uploads, audit and sketch bytes are not read
# by cached endpoints (a sketch's arrival updates its version row).
WATCHED = ("users", "teams", "memberships", "namespaces", "tokens", "skills", "versions", "dist_tags")
_BUMP = "UPDATE registry_state SET generation = generation + 1 WHERE id = 1"


def upgrade() -> None:
    op.create_table(
        "registry_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_registry_state_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry_state")),
    )
    op.execute("INSERT INTO registry_state (id, generation) VALUES (1, 0)")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION tvreg_bump_generation() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN {_BUMP}; RETURN NULL; END $$"
        )
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
    if postgres:
        op.execute("DROP FUNCTION tvreg_bump_generation()")
    op.drop_table("registry_state")
