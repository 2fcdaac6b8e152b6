"""Commands that change or check a model environment's skill set: uninstall, upgrade, lock, sync, verify.

Thin: each calls one library function (:mod:`tvreg._env.operations`,
:mod:`tvreg._env.verify`, :mod:`tvreg._env.plan`) and prints its result the way pip/uv do.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from . import app
from .app import RichProgress, human_size, main, out, parse_weights

INTO = click.option(
    "--into",
    "into",
    type=click.Path(exists=True, file_okay=False),
    help="The model environment (default: the current directory when it holds tvreg.lock).",
)
NAMESPACE = click.option(
    "--namespace",
    "namespace",
    multiple=True,
    metavar="NS",
    help="Where a bare skill name is looked up, in order (repeatable; default: config `namespaces`, "
    "else your own and your teams').",
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
GATE = click.option(
    "--gate", "gate", metavar="MODULE:FN",
    help="Evaluate the staged model with this hook (as `tvreg sweep`) before it replaces the model.",
)  # fmt: skip
REQUIRE = click.option(
    "--require", "requires", multiple=True, metavar="METRIC>=X",
    help="What the --gate hook must measure, e.g. refusal_rate>=0.8 (repeatable).",
)  # fmt: skip


def _hub_scope(ctx: click.Context, _param: click.Parameter, url: str | None) -> None:
    """``--hub-endpoint``: in force for the whole command (the scope closes with click's context)."""
    if url:
        from .._registry.hub import using_endpoint

        ctx.with_resource(using_endpoint(url))


HUB_ENDPOINT = click.option(
    "--hub-endpoint", metavar="URL", expose_value=False, callback=_hub_scope,
    help="The Hugging Face Hub (or mirror) for hf:// arguments (default: HF_ENDPOINT, else config `hub_endpoint`).",
)  # fmt: skip


def gate_of(gate, requires):
    """The :class:`tvreg._env.policy.Gate` of ``--gate``/``--require`` (None without ``--gate``)."""
    if requires and not gate:
        raise click.UsageError("--require needs --gate MODULE:FN (the hook that measures it).")
    if not gate:
        return None
    from .._env.policy import make_gate

    return make_gate(gate, requires)


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


def into_dir(into, *, required: bool = False):
    """``--into`` (or the positional alias), else the current directory when it holds ``tvreg.lock``."""
    if into is not None:
        return Path(into)
    if (Path.cwd() / "tvreg.lock").is_file():
        return Path.cwd()
    if required:
        raise click.UsageError("no model environment given: pass --into DIR (the current directory has no tvreg.lock).")
    return None


def watch(progress, model_dir):
    """Remember which model a command changes, so an interrupted progress bar can say it is unchanged."""
    app.CHANGING = Path(model_dir) if model_dir is not None else Path.cwd()
    return progress


def print_nothing(res) -> None:
    """The no-op summary, like uv's "Audited N packages"."""
    out.print(f"Nothing to change: {len(res.skills)} skill(s) already installed in {res.model_dir}.")


def print_installed(res) -> None:
    """The set now installed, as a table, then any notes."""
    table = Table(box=None, header_style="bold")
    signed = any(getattr(s, "signed_by", None) for s in res.skills)  # under a tvreg.toml policy
    for col in ("skill", "version", "ω", "from") + (("signed by",) if signed else ()):
        table.add_column(col)
    for s in res.skills:
        extra = ((s.signed_by[:19] + "…") if s.signed_by else "unsigned",) if signed else ()
        table.add_row(s.id, s.version, f"{s.weight:.6g}", s.weight_source, *extra)
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
    from .._env.operations import uninstall as do_uninstall

    target = into_dir(into)
    res = do_uninstall(list(names), into=target, dry_run=dry_run, progress=watch(RichProgress(), target))
    if res.dry_run:
        print_plan(res.plan)
        return
    print_result(res, "Uninstalled " + ", ".join(names) + " from")


@main.command()
@click.argument("names", nargs=-1, metavar="[NAME...]")
@INTO
@REGISTRY
@RESOLUTION
@OFFLINE
@DRY_RUN
@GATE
@REQUIRE
def upgrade(names, into, registry, resolution, offline, dry_run, gate, requires):
    """Re-resolve installed registry skills (NAMEs, or all) to the highest versions allowed.

    Each skill stays within the requirement it was installed with; a weight you set is
    kept, default weights are recomputed. Like `uv lock --upgrade-package` then `uv sync`.
    A locked version that is now yanked is kept (with its reason) unless a higher one is allowed.
    `--gate` checks the staged model before the swap, as for `tvreg install`.
    """
    upgrade_gate = gate_of(gate, requires)
    target = into_dir(into)
    if target is not None and not dry_run and Path(target).is_dir():
        from .._env import noop

        found = noop.check_upgrade(
            Path(target).resolve(), list(names), registry=registry, resolution=resolution, offline=offline
        )
        if found is not None:
            _print_no_upgrade(found)
            return
    from .._env.operations import upgrade as do_upgrade

    res = do_upgrade(
        list(names), into=target, registry=registry, resolution=resolution, offline=offline, dry_run=dry_run,
        gate=upgrade_gate, progress=watch(RichProgress(), target),
    )  # fmt: skip
    if res.dry_run:
        print_plan(res.plan)
        return
    moved = [s for s in res.plan.skills if s.change in ("upgrade", "downgrade", "replace")] if res.plan else []
    if not res.changed:
        _print_no_upgrade(res)
        return
    for s in moved:
        out.print(f"{s.change}d {s.name} {s.previous} → {s.version}" if s.change != "replace" else f"replaced {s.name}")
    print_result(res, "Upgraded")


def _print_no_upgrade(res) -> None:
    out.print(f"Nothing to change: no newer versions allowed; {len(res.skills)} skill(s) already installed.")


@main.command(name="lock")
@click.argument("requirements", nargs=-1, metavar="[SKILL...]")
@INTO
@click.option(
    "--weight", "weights", multiple=True, metavar="NAME=ω", help="Merge weight of one skill (repeatable)."
)
@REGISTRY
@RESOLUTION
@OFFLINE
@NAMESPACE
@DRY_RUN
def lock_(requirements, into, weights, registry, resolution, offline, namespace, dry_run):
    """Resolve SKILLs with the installed set and write tvreg.lock; the weights are not touched.

    The artifacts are kept in the local store, so `tvreg sync` (even `--offline`) can
    materialise the lock later.
    """
    from .._env.operations import lock as do_lock

    target = into_dir(into)
    res = do_lock(
        list(requirements), into=target, weights=parse_weights(weights), registry=registry,
        resolution=resolution, offline=offline, namespaces=list(namespace) or None, dry_run=dry_run,
        progress=watch(RichProgress(), target),
    )  # fmt: skip
    if res.dry_run:
        print_plan(res.plan)
        return
    if not res.changed:
        print_nothing(res)
        return
    for s in res.skills:
        out.print(f"{s.id}@{s.version}  ω={s.weight:.6g}  {s.digest}")
    where = res.model_dir
    out.print(
        f"Locked {len(res.skills)} skill(s) in {where / 'tvreg.lock'} "
        f"(run `tvreg sync --into {where}` to write the weights)."
    )


@main.command()
@click.argument("model_dir", required=False, type=click.Path(exists=True, file_okay=False))
@INTO
@click.option(
    "--locked", is_flag=True, help="Fail if tvreg.lock is out of date or the weights differ from it (for CI)."
)
@click.option(
    "--general",
    metavar="PATH",
    type=click.Path(exists=True),
    help="An untouched copy of G, kept in this machine's store (for a lock written elsewhere).",
)
@click.option(
    "--base", metavar="PRE",
    help="θ_pre on this machine, for locked Hub skills converted from a repo that names no base (fingerprint checked).",
)  # fmt: skip
@HUB_ENDPOINT
@OFFLINE
@DRY_RUN
@GATE
@REQUIRE
def sync(model_dir, into, locked, general, base, offline, dry_run, gate, requires):
    """Re-create the weights from tvreg.lock alone, fetching artifacts by digest.

    `--gate` checks the re-created weights before they replace the model's, as for `tvreg install`.
    """
    if model_dir is not None and into is not None:
        raise click.UsageError("give the model environment either as MODEL_DIR or with --into (not both).")
    sync_gate = gate_of(gate, requires)
    target = into_dir(model_dir or into)
    if target is not None and not dry_run:
        from .._env import noop

        found = noop.check_sync(Path(target).resolve(), general=general)
        if found is not None:
            print_nothing(found)
            return
    from .._env.operations import sync as do_sync

    res = do_sync(
        target, locked=locked, offline=offline, general=general, base=base, dry_run=dry_run, gate=sync_gate,
        progress=watch(RichProgress(), target),
    )  # fmt: skip
    if res.dry_run:
        print_plan(res.plan)
        return
    if not res.changed:
        print_nothing(res)
        return
    print_result(res, "Synced")


@main.command()
@click.argument("model_dir", required=False, type=click.Path(exists=True, file_okay=False))
@INTO
def verify(model_dir, into):
    """Re-hash the model's weights and compare with tvreg.lock; name every tensor that differs."""
    from .._env.verify import describe_result
    from .._env.verify import verify as do_verify
    from .._format.fingerprint import short
    from ..errors import WeightsMismatch

    if model_dir is not None and into is not None:
        raise click.UsageError("give the model environment either as MODEL_DIR or with --into (not both).")
    model_dir = into_dir(model_dir or into, required=True)
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
