"""`tvreg export`: skills as a PEFT LoRA adapter directory, for servers that load adapters over G."""

from __future__ import annotations

import json

import click

from .app import RichProgress, human_size, main, out


@main.command()
@click.argument("source", metavar="MODEL_ENV|SKILL")
@click.option(
    "--as", "fmt_as", type=click.Choice(["peft"]), default="peft", show_default=True, help="Adapter format."
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(),
    help="The adapter directory to create (must not exist).",
)
@click.option("--rank", type=click.IntRange(min=1), help="The same LoRA rank for every module.")
@click.option(
    "--energy",
    type=click.FloatRange(0, 1, min_open=True),
    help="Per module, the smallest rank keeping this fraction of ‖ΔW‖² (default 0.99).",
)
@click.option(
    "--per-skill", is_flag=True, help="One adapter per installed skill (each at its ω), in DIR/<skill>."
)
@click.option("--weight", type=float, default=1.0, show_default=True, help="ω of a single skill SOURCE.")
@click.option(
    "--base",
    metavar="MODEL",
    help="For a single skill: the model environment or base model it will be served on.",
)
@click.option(
    "--others",
    type=click.Choice(["refuse", "save", "drop"]),
    default="refuse",
    show_default=True,
    help="Embeddings, norms and biases: refuse, save whole (modules_to_save) or drop.",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    help="The adapter's dtype (default: G's, tensor by tensor).",
)
@click.option("--no-check", is_flag=True, help="Skip the probe (G + adapter against the model).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def export(source, fmt_as, output, rank, energy, per_skill, weight, base, others, dtype, no_check, fmt):
    """Write a model environment's skill set (Σ ω_k τ_k), or one skill, as a LoRA adapter.

    Each changed linear projection's ΔW becomes B A by a truncated SVD (rank `--rank`, or
    chosen per module by `--energy`); the report gives per module ‖ΔW − BA‖/‖ΔW‖, the
    adapter's size against the skill artifacts, and the logits of G + adapter (loaded with
    PEFT) against the installed model on a probe batch. SOURCE is a model environment,
    a `.tvskill` file or a registry skill `ns/skill@1.2.0` (with `--base`).
    """
    from .._env.export import export_peft

    results = export_peft(
        source,
        output,
        rank=rank,
        energy=energy,
        per_skill=per_skill,
        weight=weight,
        base=base,
        others=others,
        dtype=dtype,
        check=not no_check,
        progress=RichProgress(),
    )
    if fmt == "json":
        out.print_json(json.dumps([r.to_dict() for r in results]))
        return
    for r in results:
        print_result(r)


def print_result(r) -> None:
    """Per module: how it was exported, rank and error; then sizes and the probe."""
    out.print(f"[bold]{r.label}[/] → {r.path}")
    width = max((len(m.name) for m in r.modules), default=10)
    out.print(f"  {'tensor':<{width}}  {'as':<9} {'rank':>5}  rel. error")
    for m in sorted(r.modules, key=lambda m: -m.rel_error):
        if m.how == "zero":
            continue
        rank = "-" if m.rank is None else str(m.rank)
        out.print(f"  {m.name:<{width}}  {m.how:<9} {rank:>5}  {m.rel_error:.2e}")
    ratio = r.adapter_bytes / r.artifact_bytes if r.artifact_bytes else float("nan")
    out.print(
        f"  overall ‖ΔW − ΔŴ‖/‖ΔW‖ {r.rel_error:.3e}; adapter {human_size(r.adapter_bytes)} vs skill "
        f"artifacts {human_size(r.artifact_bytes)} ({ratio:.2f}×)"
    )
    if r.probe is not None:
        p = r.probe
        out.print(
            f"  probe ({p.tokens} tokens, against {p.reference}): max |Δlogit| {p.max_abs_diff:.3e}, "
            f"‖Δlogits‖/‖logits‖ {p.rel_error:.3e}, top-1 agreement {p.top1_agreement:.1%}"
        )
