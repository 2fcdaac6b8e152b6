"""The ``tvreg-server`` command: serve the registry, migrate its database, administer accounts.

::

    tvreg-server [serve] [--data DIR] [--database-url URL] [--host H] [--port P] [--max-artifact-bytes N]
                 [--blob-url URL [--blob-option KEY=VALUE ...]] [--request-timeout S] [--keep-alive-timeout S]
                 [--auth-failure-limit N] [--database-timeout S] [--forwarded-allow-ips IPS]
    tvreg-server db upgrade [--revision REV]        tvreg-server db current
    tvreg-server admin create-user NAME             tvreg-server admin create-team TEAM [--private]
    tvreg-server admin add-member TEAM USER --role read|write|admin   tvreg-server admin remove-member TEAM USER
    tvreg-server admin list-users|list-teams [--format json]
    tvreg-server admin list-members TEAM [--format json]    tvreg-server admin list-tokens USER [--format json]
    tvreg-server admin set-quota [--namespace NS --storage-bytes N] [--user USER --open-uploads N]
    tvreg-server admin show-quota [--namespace NS] [--user USER]
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
    except ApiError as exc:
        hint = exc.extra.get("hint")
        raise _Failure(str(exc) + (f"\nhint: {hint}" if hint else "")) from exc
    except SchemaOutdated as exc:
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
@click.option(
    "--max-connections",
    type=click.IntRange(min=8),
    envvar="TVREG_MAX_CONNECTIONS",
    metavar="N",
    help="Open connections in all; the last 1/16 (at least 4) only serve /health (503 beyond).  "
    "[default: 4096, or the open-file limit less 128]",
)
@click.option(
    "--max-connections-per-client",
    type=click.IntRange(min=1),
    envvar="TVREG_MAX_CONNECTIONS_PER_CLIENT",
    metavar="N",
    default=64,
    show_default=True,
    help="Open connections one client address may hold (trusted proxies exempt; 503 beyond).",
)
@click.option(
    "--max-open-uploads",
    type=click.IntRange(min=1),
    envvar="TVREG_MAX_OPEN_UPLOADS",
    metavar="N",
    help="Open upload sessions one user may hold (429 beyond).  [default: 16]",
)
@click.option(
    "--upload-expiry",
    type=click.FloatRange(min=0, min_open=True),
    envvar="TVREG_UPLOAD_EXPIRY",
    metavar="SECONDS",
    help="An open upload idle this long expires and its bytes are dropped.  [default: 86400]",
)
@click.option(
    "--namespace-quota",
    type=click.IntRange(min=1),
    envvar="TVREG_NAMESPACE_QUOTA",
    metavar="BYTES",
    help="Bytes of artifacts and sketches one namespace may hold (507 quota_exceeded beyond).  [default: none]",
)
@_store_options
@click.option(
    "--http",
    "http_impl",
    type=click.Choice(["auto", "h11", "httptools"]),
    default="auto",
    show_default=True,
    envvar="TVREG_HTTP",
    help="HTTP parser: httptools (C; `pip install httptools`) or h11 (pure Python); auto: httptools when installed.",
)
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
    max_connections: int | None,
    max_connections_per_client: int,
    max_open_uploads: int | None,
    upload_expiry: float | None,
    namespace_quota: int | None,
    blob_url: str | None,
    blob_options: dict[str, Any],
    http_impl: str,
    log_level: str,
) -> None:
    """Serve the registry API (OpenAPI at /openapi.json, docs at /docs)."""
    import uvicorn

    from .limits import http_protocol_base

    try:
        base = http_protocol_base(http_impl)
    except ImportError:
        raise _Failure(
            "--http httptools needs the `httptools` package, which is not installed.\n"
            "hint: `pip install httptools`, or use --http auto (h11 when httptools is missing)"
        ) from None
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
            max_open_uploads=max_open_uploads,
            upload_expiry=upload_expiry,
            namespace_quota=namespace_quota,
        )
    )
    from .app import create_app
    from .limits import raise_file_limit, timed_h11_protocol
    from .uploads import drop_dead_leases, instance_prefix

    ctx.instance = instance_prefix(host, port)
    try:
        _guard(ctx.staging.create)
        _guard(ctx.store.create)
        _guard(lambda: drop_dead_leases(ctx))
    except BaseException:
        ctx.close()
        raise
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    app = create_app(ctx)
    settings = ctx.settings
    files = raise_file_limit()
    if max_connections is None:
        max_connections = max(8, min(4096, files - 128))
    trusted = frozenset(a.strip() for a in forwarded_allow_ips.split(",") if a.strip())
    protocol = timed_h11_protocol(
        settings.request_timeout,
        max_connections=max_connections,
        per_client=max_connections_per_client,
        reserve=max(4, max_connections // 16),
        exempt=trusted,
        base=base,
    )
    try:
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_level=log_level,
            http=protocol,
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


@admin.command("remove-member")
@click.argument("team")
@click.argument("user")
@_db_options
def remove_member(team: str, user: str, data_dir: str | None, database_url: str | None) -> None:
    """Take USER out of TEAM; effective at the next request on every replica."""
    from .admin import remove_member as remove

    _admin(data_dir, database_url, lambda ctx: remove(ctx, team, user))
    click.echo(f"`{user}` is no longer a member of team `{team}`", err=True)


def _listing(rows: list[dict], fmt: str, columns: list[str]) -> None:
    import json

    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    widths = [max([len(c)] + [len(str(r[c])) for r in rows]) for c in columns]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in rows:
        click.echo("  ".join(str(r[c]).ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())


_FORMAT = click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)


@admin.command("list-users")
@_FORMAT
@_db_options
def list_users(fmt: str, data_dir: str | None, database_url: str | None) -> None:
    """Every user."""
    from .admin import list_users as run

    _listing(_admin(data_dir, database_url, run), fmt, ["name", "created_at"])


@admin.command("list-teams")
@_FORMAT
@_db_options
def list_teams(fmt: str, data_dir: str | None, database_url: str | None) -> None:
    """Every team, whether it is personal and whether its namespace is private."""
    from .admin import list_teams as run

    _listing(_admin(data_dir, database_url, run), fmt, ["name", "personal", "private"])


@admin.command("list-members")
@click.argument("team")
@_FORMAT
@_db_options
def list_members(team: str, fmt: str, data_dir: str | None, database_url: str | None) -> None:
    """TEAM's members and their roles."""
    from .admin import list_members as run

    _listing(_admin(data_dir, database_url, lambda ctx: run(ctx, team)), fmt, ["user", "role"])


@admin.command("list-tokens")
@click.argument("user")
@_FORMAT
@_db_options
def list_tokens(user: str, fmt: str, data_dir: str | None, database_url: str | None) -> None:
    """USER's tokens: name, role, state and dates (never the secret, which is not stored)."""
    from .admin import list_tokens as run

    rows = _admin(data_dir, database_url, lambda ctx: run(ctx, user))
    _listing(rows, fmt, ["name", "role", "state", "created_at", "expires_at"])


@admin.command("set-quota")
@click.option("--namespace", metavar="NS", help="The namespace whose storage quota to set.")
@click.option("--storage-bytes", type=click.IntRange(min=0), help="Bytes NS may hold; 0: the server default.")
@click.option("--user", metavar="USER", help="The user whose open-upload limit to set.")
@click.option(
    "--open-uploads", type=click.IntRange(min=0), help="Open uploads USER may hold; 0: the default."
)
@_db_options
def set_quota(
    namespace: str | None,
    storage_bytes: int | None,
    user: str | None,
    open_uploads: int | None,
    data_dir: str | None,
    database_url: str | None,
) -> None:
    """Set a namespace's storage quota and/or a user's open-upload limit (effective at once)."""
    from .admin import set_quota as run

    if (
        (namespace is None) != (storage_bytes is None)
        or (user is None) != (open_uploads is None)
        or not (namespace or user)
    ):
        raise _Failure("give --namespace with --storage-bytes, and/or --user with --open-uploads.")
    _admin(
        data_dir,
        database_url,
        lambda ctx: run(
            ctx, namespace=namespace, storage=storage_bytes, user=user, open_uploads=open_uploads
        ),
    )
    click.echo("quota set", err=True)


@admin.command("show-quota")
@click.option("--namespace", metavar="NS")
@click.option("--user", metavar="USER")
@click.option("--namespace-quota", type=click.IntRange(min=1), envvar="TVREG_NAMESPACE_QUOTA", hidden=True)
@click.option("--max-open-uploads", type=click.IntRange(min=1), envvar="TVREG_MAX_OPEN_UPLOADS", hidden=True)
@_db_options
def show_quota(
    namespace: str | None,
    user: str | None,
    namespace_quota: int | None,
    max_open_uploads: int | None,
    data_dir: str | None,
    database_url: str | None,
) -> None:
    """Print (JSON) what NS holds against its quota and/or USER's open uploads against their limit."""
    import json

    from .admin import show_quota as run

    if not (namespace or user):
        raise _Failure("give --namespace and/or --user.")
    shown = _admin(
        data_dir,
        database_url,
        lambda ctx: run(ctx, namespace=namespace, user=user),
        namespace_quota=namespace_quota,
        max_open_uploads=max_open_uploads,
    )
    click.echo(json.dumps(shown, indent=2))


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
