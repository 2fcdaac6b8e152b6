"""Commands that change or check a model environment's skill set: uninstall, upgrade, lock, sync, verify.

Thin: each calls one library function (:mod:`tvreg.install`, :mod:`tvreg.sync`,
:mod:`tvreg.verify`, :mod:`tvreg.plan`) and prints its result the way pip/uv do.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from .app import RichProgress, human_size, main, out, parse_weights

INTO = click.option(
    "--into",
    "into",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="The model environment.",
)
OFFLINE = click.option(
    "--offline", is_flag=True, help="Use only the local store and download cache; no network."
)
REGISTRY = click.option(
    "--registry", metavar="URL", help="Registry to resolve against (default: the logged-in one)."
)
RESOLUTION = click.option(
    "--resolution",
    type=click.Choice(["highest", "lowest"]),
    default="highest",
    show_default=True,
    help="Pick the highest versions, or the lowest (to test lower bounds).",
)
DRY_RUN = click.option("--dry-run", is_flag=True, help="Show the resolved set and its cost; change nothing.")


def print_plan(plan) -> None:
    """The ``--dry-run`` table: each skill, version, ω, download, and the totals."""
    table = Table(box=None, header_style="bold")
    for col in ("", "skill", "version", "ω", "ω from", "size", "download"):
        table.add_column(col, no_wrap=True)
    marks = {"add": "+", "remove": "-", "keep": " ", "upgrade": "~", "downgrade": "~", "replace": "~"}
    for s in plan.skills:
        version = f"{s.previous} → {s.version}" if s.previous and s.previous != s.version else s.version
        weight = "-" if s.weight is None else f"{s.weight:.6g}"
        dl = (
            human_size(s.download)
            if s.download
            else ("cached" if s.change not in ("keep", "remove") else "-")
        )
        table.add_row(marks[s.change], s.name, version, weight, s.weight_source, human_size(s.size), dl)
    # A plan is read (and parsed) row by row: never fold or crop it to the terminal's width.
    Console(highlight=False, width=max(out.width, 200)).print(table)
    out.print(
        f"Would download {human_size(plan.download_bytes) if plan.download_bytes else 'nothing'}"
        f" ({human_size(plan.cached_bytes) if plan.cached_bytes else 'nothing'} cached already); "
        f"estimated peak memory {human_size(plan.peak_memory_bytes)}; output {human_size(plan.output_bytes)}."
    )
    count = sum(1 for s in plan.skills if s.change != "remove")
    out.print(f"Would install {count} skill(s) into {plan.model_dir} (dry run, nothing written).")


def print_installed(res) -> None:
    """The set now installed, as a table, then any notes."""
    table = Table(box=None, header_style="bold")
    for col in ("skill", "version", "ω", "from"):
        table.add_column(col)
    for s in res.skills:
        table.add_row(s.name, s.version, f"{s.weight:.6g}", s.weight_source)
    out.print(table)
    for note in res.notes:
        out.print(f"[yellow]note:[/] {note}")


def print_result(res, verb: str) -> None:
    """The set now installed, then one summary line."""
    print_installed(res)
    out.print(
        f"{verb} {res.model_dir}: {len(res.skills)} skill(s) in {res.seconds:.1f} s "
        f"({res.bytes_written / 2**20:.1f} MiB written; weights {res.output_fingerprint[:12]})."
    )


@main.command()
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@INTO
@DRY_RUN
def uninstall(names, into, dry_run):
    """Remove skills: the weights become exactly those of installing the remaining set."""
    from ..install import uninstall as do_uninstall
    from ..plan import make_plan

    if dry_run:
        print_plan(make_plan(into, removing=names))
        return
    res = do_uninstall(list(names), into=into, progress=RichProgress())
    print_result(res, "Uninstalled " + ", ".join(names) + " from")


@main.command()
@click.argument("names", nargs=-1, metavar="[NAME...]")
@INTO
@REGISTRY
@RESOLUTION
@OFFLINE
@DRY_RUN
def upgrade(names, into, registry, resolution, offline, dry_run):
    """Re-resolve installed registry skills (NAMEs, or all) to the highest versions allowed.

    Each skill stays within the requirement it was installed with; a weight you set is
    kept, default weights are recomputed. Like `uv lock --upgrade-package` then `uv sync`.
    """
    from ..environment import require_lock
    from ..fetch import resolve_install
    from ..plan import make_plan
    from ..sync import upgrade as do_upgrade
    from ..sync import upgrade_targets

    progress = RichProgress()
    if dry_run:
        lock = require_lock(Path(into))
        targets = upgrade_targets(lock, names, Path(into))
        got = resolve_install(
            [], into=into, registry=registry, resolution=resolution, upgrade=targets, offline=offline,
            download=False, progress=progress,
        )  # fmt: skip
        print_plan(make_plan(into, got, refresh_defaults=True, keep_user_weights_of=targets))
        return
    res = do_upgrade(
        list(names), into=into, registry=registry, resolution=resolution, offline=offline, progress=progress
    )
    print_result(res, "Upgraded")


@main.command(name="lock")
@click.argument("requirements", nargs=-1, metavar="[SKILL...]")
@INTO
@click.option(
    "--weight", "weights", multiple=True, metavar="NAME=ω", help="Merge weight of one skill (repeatable)."
)
@REGISTRY
@RESOLUTION
@OFFLINE
def lock_(requirements, into, weights, registry, resolution, offline):
    """Resolve SKILLs with the installed set and write tvreg.lock; the weights are not touched.

    The artifacts are downloaded into the cache, so `tvreg sync` (even `--offline`) can
    materialise the lock later.
    """
    from ..sync import lock as do_lock

    res = do_lock(
        list(requirements),
        into=into,
        weights=parse_weights(weights),
        registry=registry,
        resolution=resolution,
        offline=offline,
        progress=RichProgress(),
    )
    for s in res.skills:
        out.print(f"{s.name}=={s.version}  ω={s.weight:.6g}  {s.digest}")
    state = (
        "weights up to date"
        if res.output_fingerprint
        else f"run `tvreg sync --into {into}` to write the weights"
    )
    out.print(f"Locked {len(res.skills)} skill(s) in {Path(into) / 'tvreg.lock'} ({state}).")


@main.command()
@INTO
@click.option(
    "--locked", is_flag=True, help="Fail if tvreg.lock is out of date or the weights differ from it (for CI)."
)
@OFFLINE
def sync(into, locked, offline):
    """Re-create the weights from tvreg.lock alone, fetching artifacts by digest."""
    from ..sync import sync as do_sync

    res = do_sync(into, locked=locked, offline=offline, progress=RichProgress())
    print_result(res, "Synced")


@main.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
def verify(model_dir):
    """Re-hash MODEL_DIR's weights and compare with tvreg.lock; name every tensor that differs."""
    from ..errors import WeightsMismatch
    from ..fingerprint import short
    from ..verify import describe_result
    from ..verify import verify as do_verify

    res = do_verify(model_dir, progress=RichProgress())
    if res.ok:
        out.print(f"{model_dir}: weights match tvreg.lock ({short(res.found)}).")
        return
    for d in res.diffs:
        out.print(f"{d.tensor}: {d.problem} (expected {d.expected or '-'}, found {d.found or '-'})")
    raise WeightsMismatch(
        describe_result(res),
        tensors=[d.tensor for d in res.diffs],
        hints=[f"re-create them from the lock: `tvreg sync --into {model_dir}`"],
    )
