"""The ``tvreg-server`` command: serve the registry, migrate its database, administer accounts.

::

    tvreg-server [serve] [--data DIR] [--database-url URL] [--host H] [--port P] [--max-artifact-bytes N]
                 [--blob-url URL [--blob-option KEY=VALUE ...]] [--request-timeout S] [--keep-alive-timeout S]
                 [--auth-failure-limit N] [--database-timeout S] [--forwarded-allow-ips IPS]
    tvreg-server db upgrade [--revision REV]        tvreg-server db current
    tvreg-server admin create-user NAME             tvreg-server admin create-team TEAM [--private]
    tvreg-server admin add-member TEAM USER --role read|write|admin
    tvreg-server admin create-token USER [--name N] [--expires-days D] [--role R]
    tvreg-server admin revoke-token USER --name N   tvreg-server admin gc [--grace-hours H] [--blob-url URL]

``serve`` is the default command. A brand-new SQLite data directory is migrated on
first use; any other database must be at the migration head, or the command refuses
with a message naming ``tvreg-server db upgrade``. Errors are one sentence on stderr
and exit status 1; ``create-token`` prints the token, and nothing else, on stdout.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
from sqlalchemy.exc import SQLAlchemyError

from . import __version__
from .errors import ApiError, SchemaOutdated
from .settings import Settings, parse_blob_option

F = TypeVar("F", bound=Callable[..., Any])


def _db_options(fn: F) -> F:
    fn = click.option(
        "--database-url",
        envvar="TVREG_DATABASE_URL",
        metavar="URL",
        help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db (default: SQLite in --data).",
    )(fn)
    fn = click.option(
        "--data",
        "data_dir",
        envvar="TVREG_REGISTRY_DATA",
        type=click.Path(file_okay=False),
        metavar="DIR",
        help="Registry data directory: blobs/ and, by default, registry.db.  [default: ./registry]",
    )(fn)
    return fn


def _blob_options(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    try:
        return dict(parse_blob_option(v) for v in values)
    except ValueError as exc:
        raise click.BadParameter(f"{exc}; write KEY=VALUE, the value as JSON or plain text.") from exc


def _store_options(fn: F) -> F:
    fn = click.option(
        "--blob-option",
        "blob_options",
        multiple=True,
        callback=_blob_options,
        metavar="KEY=VALUE",
        help='Option for the object store\'s fsspec filesystem, value as JSON or text, e.g. client_kwargs=\'{"endpoint_url": "http://minio:9000"}\'. Repeatable.',
    )(fn)
    fn = click.option(
        "--blob-url",
        envvar="TVREG_BLOB_URL",
        metavar="URL",
        help="Keep blobs in this object store (fsspec URL, e.g. s3://bucket/prefix; needs tvreg[s3]); "
        "uploads are still staged in --data. S3 credentials and endpoint: the AWS_* variables.  "
        "[default: --data/blobs]",
    )(fn)
    return fn


class _Failure(click.ClickException):
    """One sentence on stderr, exit status 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


def _open(data_dir: str | None, database_url: str | None, *, check: bool = True, **kw: Any):
    """The context for these options.

    With ``check`` (serving, administration), a brand-new SQLite database is created by
    running the migrations, and any other database must already be at head. Without it
    (the ``db`` commands) the database is opened as it is.
    """
    from .context import Context
    from .migrate import check_schema, upgrade

    settings = Settings.resolve(data_dir=data_dir, database_url=database_url, **kw)
    sqlite = settings.sqlite_path
    fresh = check and sqlite is not None and not sqlite.exists()
    if sqlite is not None:
        sqlite.parent.mkdir(parents=True, exist_ok=True)
    ctx = Context.open(settings)
    try:
        if fresh:
            upgrade(ctx.engine)
        if check:
            check_schema(ctx.engine)
    except BaseException:
        ctx.close()
        raise
    return ctx


def _guard(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` turning expected failures into one-sentence errors."""
    try:
        return fn()
    except (ApiError, SchemaOutdated) as exc:
        raise _Failure(str(exc)) from exc
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise _Failure(f"the registry database cannot be used: {reason}.") from exc
    except OSError as exc:
        raise _Failure(f"cannot use `{exc.filename}`: {exc.strerror}.") from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tvreg-server")
def cli() -> None:
    """tvreg-server: the registry for tvreg skills (task vectors)."""


@cli.command()
@_db_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on."
)
@click.option(
    "--max-artifact-bytes",
    type=click.IntRange(min=1),
    envvar="TVREG_MAX_ARTIFACT_BYTES",
    help="Largest artifact accepted (413 beyond).  [default: 10 GiB]",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=0, min_open=True),
    envvar="TVREG_REQUEST_TIMEOUT",
    metavar="SECONDS",
    help="Longest wait for a request's headers, and for each piece of its body (408 beyond).  [default: 60]",
)
@click.option(
    "--keep-alive-timeout",
    type=click.FloatRange(min=0, min_open=True),
    envvar="TVREG_KEEP_ALIVE_TIMEOUT",
    metavar="SECONDS",
    help="How long an idle keep-alive connection stays open.  [default: 30]",
)
@click.option(
    "--auth-failure-limit",
    type=click.IntRange(min=1),
    envvar="TVREG_AUTH_FAILURE_LIMIT",
    metavar="N",
    help="Failed token checks per client address per minute before 429.  [default: 20]",
)
@click.option(
    "--forwarded-allow-ips",
    envvar="TVREG_FORWARDED_ALLOW_IPS",
    metavar="IPS",
    default="",
    help="Comma-separated addresses or networks of reverse proxies whose X-Forwarded-For names the "
    "client (for logs and the failed-token limit); '*' trusts any peer.  [default: none]",
)
@click.option(
    "--database-timeout",
    type=click.FloatRange(min=0, min_open=True),
    envvar="TVREG_DATABASE_TIMEOUT",
    metavar="SECONDS",
    help="Longest a PostgreSQL statement may take, also when the database is frozen (503 beyond).  [default: 30]",
)
@_store_options
@click.option(
    "--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning"])
)
def serve(
    data_dir: str | None,
    database_url: str | None,
    host: str,
    port: int,
    max_artifact_bytes: int | None,
    request_timeout: float | None,
    keep_alive_timeout: float | None,
    auth_failure_limit: int | None,
    forwarded_allow_ips: str,
    database_timeout: float | None,
    blob_url: str | None,
    blob_options: dict[str, Any],
    log_level: str,
) -> None:
    """Serve the registry API (OpenAPI at /openapi.json, docs at /docs)."""
    import uvicorn

    ctx = _guard(
        lambda: _open(
            data_dir,
            database_url,
            max_artifact_bytes=max_artifact_bytes,
            blob_url=blob_url,
            blob_options=blob_options,
            request_timeout=request_timeout,
            keep_alive_timeout=keep_alive_timeout,
            auth_failure_limit=auth_failure_limit,
            database_timeout=database_timeout,
        )
    )
    from .app import create_app
    from .limits import timed_h11_protocol
    from .uploads import drop_dead_leases, instance_prefix

    ctx.instance = instance_prefix(host, port)
    try:
        _guard(ctx.store.create)
        _guard(lambda: drop_dead_leases(ctx))
    except BaseException:
        ctx.close()
        raise
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    app = create_app(ctx)
    settings = ctx.settings
    try:
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_level=log_level,
            http=timed_h11_protocol(settings.request_timeout),
            timeout_keep_alive=max(1, round(settings.keep_alive_timeout)),
            # uvicorn trusts X-Forwarded-For from loopback by default; here only named proxies.
            proxy_headers=bool(forwarded_allow_ips.strip()),
            forwarded_allow_ips=forwarded_allow_ips.strip() or None,
        )
    finally:
        ctx.close()


@cli.group()
def db() -> None:
    """Database schema migrations."""


@db.command("upgrade")
@_db_options
@click.option("--revision", default="head", show_default=True, help="Target migration revision.")
def db_upgrade(data_dir: str | None, database_url: str | None, revision: str) -> None:
    """Migrate the database to the newest schema (or to --revision)."""
    from .migrate import upgrade

    def run() -> None:
        ctx = _open(data_dir, database_url, check=False)
        try:
            before, after = upgrade(ctx.engine, revision)
        finally:
            ctx.close()
        click.echo(f"database schema: {before or 'empty'} -> {after}", err=True)

    _guard(run)


@db.command("current")
@_db_options
def db_current(data_dir: str | None, database_url: str | None) -> None:
    """Print the database's schema revision and this server's newest."""
    from .migrate import current_revision, head_revision

    def run() -> None:
        ctx = _open(data_dir, database_url, check=False)
        try:
            click.echo(f"{current_revision(ctx.engine) or 'empty'} (head: {head_revision()})")
        finally:
            ctx.close()

    _guard(run)


@cli.group()
def admin() -> None:
    """Users, teams, roles and tokens."""


def _admin(
    data_dir: str | None, database_url: str | None, action: Callable[[Any], Any], **settings: Any
) -> Any:
    def run() -> Any:
        ctx = _open(data_dir, database_url, **settings)
        try:
            return action(ctx)
        finally:
            ctx.close()

    return _guard(run)


@admin.command("create-user")
@click.argument("name")
@_db_options
def create_user(name: str, data_dir: str | None, database_url: str | None) -> None:
    """Create user NAME with a personal team and public namespace NAME."""
    from .admin import create_user as create

    _admin(data_dir, database_url, lambda ctx: create(ctx, name))
    click.echo(f"created user `{name}` and namespace `{name}`", err=True)


@admin.command("create-team")
@click.argument("team")
@click.option("--private", is_flag=True, help="Only members can see the team's namespace.")
@_db_options
def create_team(team: str, private: bool, data_dir: str | None, database_url: str | None) -> None:
    """Create TEAM and its namespace TEAM."""
    from .admin import create_team as create

    _admin(data_dir, database_url, lambda ctx: create(ctx, team, private=private))
    click.echo(f"created {'private' if private else 'public'} team `{team}`", err=True)


@admin.command("add-member")
@click.argument("team")
@click.argument("user")
@click.option(
    "--role", required=True, type=click.Choice(["read", "write", "admin"]), help="Role on the team."
)
@_db_options
def add_member(team: str, user: str, role: str, data_dir: str | None, database_url: str | None) -> None:
    """Give USER a role on TEAM (replacing an earlier one)."""
    from .admin import add_member as add

    _admin(data_dir, database_url, lambda ctx: add(ctx, team, user, role))
    click.echo(f"`{user}` is now `{role}` on team `{team}`", err=True)


@admin.command("create-token")
@click.argument("user")
@click.option("--name", default="", help="A label for the token, used to revoke it.")
@click.option(
    "--expires-days", type=click.FloatRange(min=0, min_open=True), help="Lifetime in days (default: none)."
)
@click.option(
    "--role",
    default="admin",
    show_default=True,
    type=click.Choice(["read", "write", "admin"]),
    help="Cap on what the token may do, whatever USER's roles.",
)
@_db_options
def create_token(
    user: str,
    name: str,
    expires_days: float | None,
    role: str,
    data_dir: str | None,
    database_url: str | None,
) -> None:
    """Create an API token for USER and print it once on stdout."""
    from .admin import create_token as create

    token = _admin(
        data_dir, database_url, lambda ctx: create(ctx, user, name=name, expires_days=expires_days, role=role)
    )
    click.echo(token)


@admin.command("revoke-token")
@click.argument("user")
@click.option("--name", required=True, help="The label given at creation.")
@_db_options
def revoke_token(user: str, name: str, data_dir: str | None, database_url: str | None) -> None:
    """Revoke USER's tokens labelled --name."""
    from .admin import revoke_tokens

    count = _admin(data_dir, database_url, lambda ctx: revoke_tokens(ctx, user, name=name))
    click.echo(f"revoked {count} token(s)", err=True)


@admin.command("gc")
@click.option(
    "--grace-hours", default=24.0, show_default=True, type=click.FloatRange(min=0), help="Minimum age."
)
@_store_options
@_db_options
def gc(
    grace_hours: float,
    blob_url: str | None,
    blob_options: dict[str, Any],
    data_dir: str | None,
    database_url: str | None,
) -> None:
    """Delete unreferenced blobs and abandoned upload bytes older than --grace-hours."""
    from .admin import collect_garbage

    done = _admin(
        data_dir,
        database_url,
        lambda ctx: collect_garbage(ctx, grace_seconds=grace_hours * 3600),
        blob_url=blob_url,
        blob_options=blob_options,
    )
    click.echo(f"removed {done.blobs} blob(s) and {done.staged} staged upload(s)", err=True)


from .trust_cli import add_trust_commands  # noqa: E402

add_trust_commands(admin, _admin, _db_options)  # admin add-key / list-keys / revoke-key


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point; ``serve`` is implied when the first argument is an option."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0].startswith("-") and args[0] not in ("-h", "--help", "--version")):
        args.insert(0, "serve")
    cli.main(args=args, prog_name="tvreg-server")


if __name__ == "__main__":
    main()
