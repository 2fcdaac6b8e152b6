"""Signing keys, signatures and attestations bump ``registry_state.generation``.

Skill info and the skill's web page show who signed a version and whether the key is
still good; both are served from the per-replica read cache keyed by the generation
(migration 0004). Without triggers on the trust tables a key revoked on one replica, or a
new signature or attestation, stayed invisible on cached answers until some unrelated
change bumped the counter, so a page could go on calling a stolen key "active".

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

WATCHED = ("signing_keys", "version_signatures", "attestations")
_BUMP = "UPDATE registry_state SET generation = generation + 1 WHERE id = 1"


def upgrade() -> None:
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
