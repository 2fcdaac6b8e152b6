"""``tvreg-server admin add-key | list-keys | revoke-key``: signing keys from the operator's shell.

For an operator who must act without a user's token: revoke a stolen key at once, or
register a team's key when no admin is at hand. Each write records an audit row with
the actor ``cli:admin``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click


def add_trust_commands(
    admin: click.Group, _admin: Callable[..., Any], _db_options: Callable[[Any], Any]
) -> None:
    """Attach the key commands to ``admin`` (given its runner and database options, so the
    commands land on the group of whichever module object runs, ``__main__`` included)."""

    @admin.command("add-key")
    @click.argument("owner")
    @click.argument("public_key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--team", "is_team", is_flag=True, help="OWNER is a team, not a user.")
    @click.option("--name", default="", help="A label for the key.")
    @_db_options
    def add_key(
        owner: str, public_key: Path, is_team: bool, name: str, data_dir: str | None, database_url: str | None
    ) -> None:
        """Register the PEM PUBLIC_KEY as a signing key of user (or --team) OWNER; prints its id."""
        from . import audit, trust
        from .db import write_session

        pem = public_key.read_text(encoding="utf-8", errors="replace")

        def run(ctx) -> str:
            with write_session(ctx.sessions) as s:
                user = None if is_team else trust._user(s, owner)
                team = trust._team(s, owner) if is_team else None
                key = trust.register_key(s, actor=audit.CLI_ACTOR, pem=pem, user=user, team=team, name=name)
                s.commit()
                return key.key_id

        click.echo(_admin(data_dir, database_url, run))

    @admin.command("list-keys")
    @click.argument("owner")
    @click.option("--team", "is_team", is_flag=True, help="OWNER is a team, not a user.")
    @_db_options
    def list_keys(owner: str, is_team: bool, data_dir: str | None, database_url: str | None) -> None:
        """Print OWNER's keys as JSON lines, revoked ones included."""
        from . import trust

        def run(ctx) -> list[dict]:
            with ctx.sessions() as s:
                keys = trust.list_keys(s, user=None if is_team else owner, team=owner if is_team else None)
                return [trust.key_out(k) for k in keys]

        for key in _admin(data_dir, database_url, run):
            click.echo(json.dumps(key, sort_keys=True))

    @admin.command("revoke-key")
    @click.argument("key_id")
    @click.option("--reason", required=True, help="Why (shown to every client that lists the key).")
    @_db_options
    def revoke_key(key_id: str, reason: str, data_dir: str | None, database_url: str | None) -> None:
        """Revoke the signing key KEY_ID; it stays listed, marked revoked."""
        from . import audit, trust
        from .db import write_session

        def run(ctx) -> None:
            with write_session(ctx.sessions) as s:
                trust.revoke_key(s, key_id, reason, actor=audit.CLI_ACTOR)
                s.commit()

        _admin(data_dir, database_url, run)
        click.echo(f"revoked {key_id}", err=True)
