"""The `tvreg cache` commands over the download cache."""

from __future__ import annotations

import json
import sys
import time

import click
from rich.table import Table

from .app import RichProgress, err, human_size, main, out


@main.group()
def cache():
    """The download cache of registry artifacts (content-addressed, verified on every read)."""


@cache.command(name="list")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def cache_list(fmt):
    """List cached artifacts."""
    from .._registry.cache import BlobCache

    entries = BlobCache().entries()
    if fmt == "json":
        out.print_json(
            json.dumps(
                [{"digest": e.digest, "size": e.size, "skill": e.label, "path": str(e.path)} for e in entries]
            )
        )
        return
    if not entries:
        out.print("The cache is empty.")
        return
    table = Table(box=None, header_style="bold")
    for col in ("skill", "digest", "size", "last used"):
        table.add_column(col)
    for e in entries:
        table.add_row(
            e.label or "?",
            e.digest[:19] + "…",
            human_size(e.size),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(e.mtime)),
        )
    out.print(table)
    out.print(f"{len(entries)} artifact(s), {human_size(sum(e.size for e in entries))}.")


@cache.command(name="verify")
def cache_verify():
    """Re-hash every cached artifact; evict those whose bytes changed."""
    from .._registry.cache import BlobCache

    report = BlobCache().verify(progress=RichProgress())
    for digest, found in report.evicted:
        err.print(f"[yellow]evicted:[/] {digest} (its bytes hash to {found})")
    out.print(f"{len(report.ok)} artifact(s) verified, {len(report.evicted)} evicted.")
    if report.evicted:
        sys.exit(1)


@cache.command(name="prune")
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    metavar="DAYS",
    help="Also remove artifacts unused for DAYS.",
)
@click.option("--all", "everything", is_flag=True, help="Remove every cached artifact.")
def cache_prune(older_than, everything):
    """Remove leftovers of interrupted downloads (and old or all artifacts)."""
    from .._registry.cache import BlobCache

    report = BlobCache().prune(older_than_days=older_than, everything=everything)
    out.print(f"Removed {len(report.removed)} file(s), freed {human_size(report.freed_bytes)}.")
