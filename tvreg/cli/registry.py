"""Commands that talk to a registry: account, publish, search, yank, dist-tags."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
from rich.table import Table

from .app import RichProgress, err, human_size, main, out
from .text import safe


@main.command()
@click.option(
    "--registry", metavar="URL", help="The registry's address (default: TVREG_REGISTRY or the last one)."
)
@click.option(
    "--token", metavar="TOKEN", help="An API token (`tvr_...`); prompted for when omitted, `-` reads stdin."
)
def login(registry, token):
    """Log in to a registry: check the token with /whoami, then save it (0600) for later commands."""
    from .._registry.client import RegistryClient
    from .._registry.config import config_path, remember_login, resolve

    url = resolve(registry).url
    if token == "-":
        token = sys.stdin.readline().strip()
    elif token is None:
        token = click.prompt(f"Token for {url}", hide_input=True, err=True).strip()
    if not token:
        raise click.BadParameter("the token is empty.", param_hint="--token")
    with RegistryClient(url, token) as client:
        who = client.whoami()
    remember_login(url, token)
    out.print(f"Logged in to {safe(url)} as [bold]{safe(who.get('user'))}[/] (token saved in {config_path()}).")


@main.command()
@click.option("--registry", metavar="URL", help="The registry to log out of (default: the current one).")
def logout(registry):
    """Forget the saved token of a registry."""
    from .._registry.config import forget_login, resolve

    url = resolve(registry).url
    if forget_login(url):
        out.print(f"Logged out of {url}.")
    else:
        out.print(f"Not logged in to {url}; nothing to do.")
    if os.environ.get("TVREG_TOKEN"):
        err.print("[yellow]note:[/] `TVREG_TOKEN` is set in the environment and still applies.")


@main.command()
@click.option("--registry", metavar="URL", help="The registry to ask (default: the current one).")
def whoami(registry):
    """Show who the current token belongs to, and the teams and namespaces it can use."""
    from .._registry.client import client_for

    with client_for(registry) as client:
        who = client.whoami()
        url = client.url
    out.print(f"[bold]{safe(who.get('user'))}[/] on {safe(url)}")
    teams = ", ".join(f"{t.get('team')} ({t.get('role')})" for t in who.get("teams", [])) or "-"
    out.print(f"  {'teams':<11} {safe(teams)}")
    out.print(f"  {'namespaces':<11} {safe(', '.join(map(str, who.get('namespaces', []))) or '-')}")


# -- publishing and finding -------------------------------------------------------------------


@main.command()
@click.argument("project_dir", type=click.Path(exists=True), default=".")
@click.option("--dry-run", is_flag=True, help="Build and check everything; upload nothing.")
@click.option("--registry", metavar="URL", help="Publish there (default: the logged-in registry).")
@click.option("--tag", default="latest", show_default=True, help="Dist-tag to point at the new version.")
@click.option("--no-tag", is_flag=True, help="Point no dist-tag at the new version (not even latest).")
@click.option(
    "--chunk-size",
    type=click.IntRange(min=1),
    metavar="BYTES",
    help="At most BYTES per upload request (default: the registry's suggestion).",
)
@click.option("--sign", "sign", metavar="KEY", help="Sign the artifact with this key (name or path); default: [sign] key.")
def publish(project_dir, dry_run, registry, tag, no_tag, chunk_size, sign):
    """Publish the skill project in PROJECT_DIR (a directory with tvskill.toml).

    \b
    tvskill.toml:
      name = "nlp/science"          # namespace/skill (or skill: your own namespace)
      version = "1.0.0"
      base = "../models/pre"        # θ_pre: directory, cached Hub id or fingerprint
      dataset_size = 61000          # |D|, for the default weight |D|/|G|
      dataset_unit = "examples"     # or "tokens"
      description = "..."
      license = "Apache-2.0"
      artifact = "science.tvskill"  # publish this file, or build one:
      [build]
      finetuned = "../models/science"   # or adapter = "lora-dir"

    The artifact is built into PROJECT_DIR/dist when missing or stale, every tensor is
    decoded and checked, then it is uploaded in resumable chunks.
    """
    from .._registry.publish import publish as do_publish

    res = do_publish(
        project_dir,
        registry=registry,
        tag=None if no_tag else tag,
        dry_run=dry_run,
        chunk_size=chunk_size,
        progress=RichProgress(),
        sign=sign,
    )
    what = f"[bold]{res.label}[/] ({res.digest[:19]}…, {human_size(res.size)})"
    if res.status == "dry-run":
        out.print(f"Would publish {what} to {res.registry} (dry run, nothing uploaded).")
    elif res.status == "unchanged":
        if res.sketch_status == "uploaded":
            out.print(
                f"{what} is already on {res.registry} with these exact bytes; uploaded its missing "
                f"interference sketch ({human_size(res.sketch_bytes)})."
            )
        else:
            out.print(f"{what} is already on {res.registry} with these exact bytes; nothing to do.")
    else:
        tagged = f", tagged {res.tag}" if res.tag else ""
        out.print(f"Published {what} to {res.registry}{tagged}.")
        if res.sketch_status in ("uploaded", "present"):
            out.print(f"Attached its interference sketch ({human_size(res.sketch_bytes)}) for `tvreg check`.")
    if res.card_status == "uploaded":
        out.print("Set README.md as its skill card.")
    elif res.card_status.startswith("failed"):
        err.print(f"[bold yellow]warning:[/] README.md was not set as the skill card ({res.card_status[8:]}).", soft_wrap=True)
    if res.sketch_status.startswith("failed"):
        err.print(
            f"[bold yellow]warning:[/] the interference sketch was not uploaded ({res.sketch_status[8:]}); "
            "`tvreg check` will have to download the whole artifact.",
            soft_wrap=True,
        )
        err.print("[cyan]hint:[/] run the same `tvreg publish` again: it uploads only the missing sketch.")
    if res.signature_status in ("uploaded", "present"):
        out.print(f"Signed by {res.signed_by}.")
    elif res.signature_status.startswith("failed"):
        err.print(f"[bold red]error:[/] the signature was not attached: {res.signature_status[8:]}", soft_wrap=True)
        err.print("[cyan]hint:[/] fix the key, then run the same `tvreg publish --sign` again: it attaches only the signature.")
        raise SystemExit(1)


@main.command()
@click.argument("query", required=False)
@click.option("--base", metavar="FP", help="Only skills built for this base fingerprint (64 hex).")
@click.option(
    "--into",
    metavar="MODEL",
    type=click.Path(exists=True, file_okay=False),
    help="Only skills that fit this model environment's base.",
)
@click.option("--tag", help="Only skills that have this dist-tag.")
@click.option("--namespace", help="Only skills in this namespace.")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--per-page", type=click.IntRange(min=1, max=100), default=20, show_default=True)
@click.option("--registry", metavar="URL", help="Registry to search (default: the logged-in one).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def search(query, base, into, tag, namespace, page, per_page, registry, fmt):
    """Search the registry by name and description, optionally only skills that fit a model."""
    from .._registry.client import client_for

    if base and into:
        raise click.UsageError("give one of `--base` and `--into`.")
    if into:
        from .._env.environment import require_lock

        base = require_lock(Path(into)).base_fingerprint
    with client_for(registry) as client:
        res = client.search(query, base=base, tag=tag, namespace=namespace, page=page, per_page=per_page)
    if fmt == "json":
        out.print_json(json.dumps(res))
        return
    items = res.get("items", [])
    if not items:
        out.print("No skills found.")
        return
    table = Table(box=None, header_style="bold")
    for col in ("skill", "latest", "versions", "description"):
        table.add_column(col)
    for item in items:
        name = str(item.get("name", "")) + (" (private)" if item.get("private") else "")
        table.add_row(
            *(safe(c) for c in (name, item.get("latest") or "-", str(item.get("versions", "")), item.get("description") or ""))
        )
    out.print(table)
    total = res.get("total", len(items))
    pages = max(1, -(-total // (res.get("per_page") or per_page)))
    if pages > 1:
        out.print(f"page {res.get('page', page)} of {pages} ({total} skills); more with `--page N`")


@main.command()
@click.argument("target", metavar="NAME@VERSION")
@click.option("--reason", required=True, help="Why: shown to everyone who pins this version.")
@click.option("--registry", metavar="URL")
def yank(target, reason, registry):
    """Yank a version: it stays installable by exact pin (with a warning) but is never picked by name."""
    from .._registry.client import client_for
    from .._registry.refs import parse_ref

    ref = parse_ref(target, require_version=True)
    with client_for(registry) as client:
        client.yank(ref, ref.version, reason)
    out.print(f"Yanked {ref} ({reason}).")


@main.command()
@click.argument("target", metavar="NAME@VERSION")
@click.option("--registry", metavar="URL")
def unyank(target, registry):
    """Undo a yank."""
    from .._registry.client import client_for
    from .._registry.refs import parse_ref

    ref = parse_ref(target, require_version=True)
    with client_for(registry) as client:
        client.unyank(ref, ref.version)
    out.print(f"Un-yanked {ref}.")


@main.group()
def tag():
    """Point dist-tags (latest, beta, ...) at versions."""


@tag.command(name="add")
@click.argument("target", metavar="NAME@VERSION")
@click.argument("tag_name", metavar="TAG")
@click.option("--registry", metavar="URL")
def tag_add(target, tag_name, registry):
    """Point TAG at NAME@VERSION."""
    from .._registry.client import client_for
    from .._registry.refs import parse_ref

    ref = parse_ref(target, require_version=True)
    with client_for(registry) as client:
        client.set_tag(ref, tag_name, ref.version)
    out.print(f"{ref.name}: {tag_name} → {ref.version}.")


@tag.command(name="rm")
@click.argument("name", metavar="NAME")
@click.argument("tag_name", metavar="TAG")
@click.option("--registry", metavar="URL")
def tag_rm(name, tag_name, registry):
    """Remove TAG from NAME (latest cannot be removed)."""
    from .._registry.client import client_for
    from .._registry.refs import parse_ref

    ref = parse_ref(name, allow_version=False)
    with client_for(registry) as client:
        client.delete_tag(ref, tag_name)
    out.print(f"{ref.name}: removed tag {tag_name}.")
