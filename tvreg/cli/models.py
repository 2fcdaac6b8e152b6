"""Commands on model environments: init, install, list."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click
from rich.table import Table

from .app import RichProgress, main, out, parse_weights
from .check import warn_before_install
from .environment_cmds import (
    DRY_RUN,
    OFFLINE,
    REGISTRY,
    RESOLUTION,
    print_installed,
    print_plan,
)


@main.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--base", metavar="PRE", help="The pretrained model G was fine-tuned from.")
@click.option("--base-fingerprint", metavar="HEX", help="θ_pre's fingerprint, if θ_pre is not at hand.")
@click.option("--general-size", type=click.IntRange(min=1), help="|G|: size of G's instruction-tuning set.")
@click.option(
    "--general-size-unit", type=click.Choice(["examples", "tokens"]), default="examples", show_default=True
)
def init(model_dir, base, base_fingerprint, general_size, general_size_unit):
    """Make MODEL_DIR (a model directory of G) a tvreg model environment."""
    from ..environment import init_environment
    from ..fingerprint import short

    lock = init_environment(
        model_dir,
        base=base,
        base_fingerprint=base_fingerprint,
        general_size=general_size,
        general_size_unit=general_size_unit,
        progress=RichProgress(),
    )
    size = f"|G| = {lock.general_size} {lock.general_size_unit}" if lock.general_size else "|G| unknown"
    out.print(
        f"Initialised {model_dir}: general {short(lock.general_fingerprint)}, "
        f"base {short(lock.base_fingerprint)}, {size}."
    )


@main.command()
@click.argument("skills", nargs=-1, metavar="SKILL...")
@click.option(
    "--into", "into", required=True, type=click.Path(file_okay=False), help="The model environment."
)
@click.option(
    "--weight", "weights", multiple=True, metavar="NAME=ω", help="Merge weight of one skill (repeatable)."
)
@click.option("--base", metavar="PRE", help="Initialise MODEL's base on the fly (see `tvreg init`).")
@click.option("--general-size", type=click.IntRange(min=1), help="|G|, for the default ω = |D|/|G|.")
@click.option(
    "--output-dtype",
    type=click.Choice(["auto", "float32", "float16", "bfloat16"]),
    help="dtype of every float tensor written (auto: G's own; default: as locked).",
)
@DRY_RUN
@REGISTRY
@RESOLUTION
@OFFLINE
@click.option(
    "--method",
    metavar="NAME",
    help="Merge method: task_arithmetic (default), ties, dare_ties, dare_linear, average, linear, wise_ft "
    "(default: the one tvreg.lock records).",
)
@click.option("--density", type=float, help="ties: keep this fraction of each τ's largest entries [0.2].")
@click.option("--lambda", "lambda_", type=float, help="ties, dare_*: scale of the merged τ [1.0].")
@click.option(
    "--drop-rate", type=float, help="dare_*: drop probability p; survivors scaled by 1/(1−p) [0.9]."
)
@click.option("--seed", type=click.IntRange(min=0), help="dare_*: seed of the drop mask [0].")
@click.option(
    "--normalize/--no-normalize",
    default=None,
    help="ties, dare_*: divide by the sum of the (agreeing) weights [ties: on, dare: off].",
)
@click.option(
    "--base-weights", metavar="PATH", help="average, linear: θ_pre's weights (directory or cached Hub id)."
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cuda", "cpu"]),
    default="auto",
    show_default=True,
    help="Merge on the GPU (fused Triton kernel) or the CPU; auto picks CUDA when available.",
)
def install(
    skills,
    into,
    weights,
    base,
    general_size,
    output_dtype,
    dry_run,
    registry,
    resolution,
    offline,
    method,
    density,
    lambda_,
    drop_rate,
    seed,
    normalize,
    base_weights,
    device,
):
    """Install skills into a model: θ = θ_G + Σ ω_k τ_k, recomputed from pristine G.

    Each SKILL is a .tvskill file, or a registry requirement: `ns/skill`, `ns/skill@^2.1`,
    `ns/skill@~1.4`, `ns/skill@>=1.2 <2`, `ns/skill@1.2.3` or `ns/skill@beta` (a dist-tag).
    Requirements, the skills already installed and every skill's `requires` are resolved
    together for the model's base; named skills are downloaded into the verified cache.
    """
    from ..fetch import resolve_install
    from ..install import install as do_install
    from ..plan import make_plan

    progress = RichProgress()
    warn_before_install(
        skills, into=into, weights=parse_weights(weights), registry=registry, resolution=resolution
    )
    got = resolve_install(
        list(skills), into=into, base=base, registry=registry, resolution=resolution, offline=offline,
        download=not dry_run, progress=progress,
    )  # fmt: skip
    if dry_run and base is None and general_size is None:
        print_plan(make_plan(into, got, weights=parse_weights(weights), output_dtype=output_dtype))
        return
    res = do_install(
        [str(r.path) for r in got],
        into=into,
        weights=parse_weights(weights),
        base=base,
        general_size=general_size,
        method=method,
        method_params={
            "density": density,
            "lambda": lambda_,
            "drop_rate": drop_rate,
            "seed": seed,
            "normalize": normalize,
            "base_weights": base_weights,
        },
        device=device,
        output_dtype=output_dtype,
        dry_run=dry_run,
        sources=[r.origin for r in got],
        progress=progress,
    )
    if dry_run:
        print_installed(res)
        out.print(f"Would install {len(res.skills)} skill(s) into {res.model_dir} (dry run, nothing written).")
        return
    print_installed(res)
    out.print(
        f"Installed {len(res.skills)} skill(s) into {res.model_dir} in {res.seconds:.1f} s "
        f"({res.bytes_written / 2**20:.1f} MiB written; weights {res.output_fingerprint[:12]})."
    )


@main.command(name="list")
@click.argument("model_dir", required=False, type=click.Path(exists=True, file_okay=False))
@click.option("--into", "into", type=click.Path(exists=True, file_okay=False), help="The model environment.")
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json", "freeze"]), default="text", show_default=True
)
def list_(model_dir, into, fmt):
    """List the skills installed in a model environment (MODEL_DIR or --into).

    `--format freeze` prints one `name==version` line per skill with ω and digest, like
    `pip freeze`.
    """
    from ..environment import require_lock

    if (model_dir is None) == (into is None):
        raise click.UsageError("give the model environment either as MODEL_DIR or with --into (not both).")
    lock = require_lock(Path(model_dir or into))
    if fmt == "json":
        out.print_json(json.dumps([asdict(s) for s in lock.skills]))
        return
    if fmt == "freeze":
        for s in lock.skills:
            out.print(f"{s.name}=={s.version}  # ω={s.weight:.6g} {s.digest}", markup=False)
        return
    table = Table(box=None, header_style="bold")
    for col in ("skill", "version", "ω", "from", "digest"):
        table.add_column(col)
    for s in lock.skills:
        table.add_row(s.name, s.version, f"{s.weight:.6g}", s.weight_source, s.digest[:19])
    out.print(table)
