"""Commands about one skill artifact: build, fingerprint, info."""

from __future__ import annotations

import json
import math
import os
import re
from typing import cast

import click
from rich.console import JustifyMethod
from rich.table import Table

from .._build import DEFAULT_MAX_EVALUATIONS
from ..errors import RegistryError
from .app import RichProgress, err, human_size, main, out, split_requirement
from .environment_cmds import HUB_ENDPOINT
from .text import safe


@main.command()
@click.option("--base", metavar="PRE", help="The pretrained model θ_pre (directory or cached Hub id).")
@click.option(
    "--general",
    metavar="G",
    help="Instead of --base: the general model G, for a WiSE-FT delta θ_CFT − θ_G (kind delta_from_general).",
)
@click.option("--finetuned", metavar="FT", help="The fine-tuned model θ_D (directory or cached Hub id).")
@click.option("--adapter", metavar="DIR", help="A PEFT LoRA adapter trained on PRE (instead of --finetuned).")
@HUB_ENDPOINT
@click.option("--name", required=True, help="Skill name (lowercase letters, digits, '-', '_', '.').")
@click.option("--version", "version_", required=True, metavar="X.Y.Z", help="Semantic version of this build.")
@click.option(
    "--dataset-size", type=click.IntRange(min=1), help="|D|: examples (or tokens) the skill was tuned on."
)
@click.option(
    "--dataset-unit", type=click.Choice(["examples", "tokens"]), default="examples", show_default=True
)
@click.option("--description", default="", help="One line about what the skill does.")
@click.option("--license", "license_", help="License of the skill (SPDX id).")
@click.option(
    "--codec",
    default="exact",
    show_default=True,
    metavar="NAME",
    help="How tensors are stored: exact (lossless), bf16, int8, int4, sign (1 bit + scale), sparse, lowrank, "
    "or auto (per tensor).",
)
@click.option(
    "-P",
    "--codec-param",
    "codec_params",
    multiple=True,
    metavar="KEY=VALUE",
    help="A codec parameter (repeatable), e.g. `-P group=64` for int8/int4, `-P per=tensor` for sign, "
    "`-P values=int4` (or int8, sign) for sparse.",
)
@click.option("--density", type=float, help="sparse: fraction of entries kept (same as `-P density=...`).")
@click.option("--rank", type=int, help="lowrank: rank of the factors (same as `-P rank=...`).")
@click.option(
    "--max-rel-error",
    type=float,
    help="auto: largest ‖τ̂−τ‖/‖τ‖ allowed per tensor (same as `-P max_rel_error=...`).",
)
@click.option(
    "--calibration",
    metavar="DATA",
    help="auto: held-out texts (a file, one per line) or a hook `module:fn`; picks the smallest coding "
    "that keeps `--min-retention` of the fine-tune's gain.",
)
@click.option(
    "--min-retention",
    type=float,
    default=0.99,
    show_default=True,
    help="auto with --calibration: share of (loss_pre − loss_τ) the coding must keep; 1 keeps τ exact.",
)
@click.option(
    "--margin/--no-margin",
    default=True,
    show_default=True,
    help="auto with a calibration file: the retention's bootstrap lower bound (5th percentile over "
    "the texts) must meet --min-retention, not only its mean.",
)
@click.option(
    "--max-evaluations",
    type=int,
    default=DEFAULT_MAX_EVALUATIONS,
    show_default=True,
    help="auto with --calibration: the most times the model is scored (2 references, the uniform "
    "bisection, then the per-layer search); it stops there with the best coding measured.",
)
@click.option(
    "--requires",
    "requires",
    multiple=True,
    metavar="NS/SKILL@RANGE",
    help="A skill this one needs (repeatable).",
)
@click.option(
    "--conflicts",
    "conflicts",
    multiple=True,
    metavar="NS/SKILL@RANGE",
    help="A skill version it cannot live with.",
)
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the .tvskill."
)
def build(
    base,
    general,
    finetuned,
    adapter,
    name,
    version_,
    dataset_size,
    dataset_unit,
    description,
    license_,
    codec,
    codec_params,
    density,
    rank,
    max_rel_error,
    calibration,
    min_retention,
    margin,
    max_evaluations,
    requires,
    conflicts,
    output,
):
    """Build a skill artifact from a fine-tuned model or a LoRA adapter.

    Lossy codecs measure each tensor's relative error ‖τ̂−τ‖/‖τ‖, record it in the
    manifest and print the worst tensors.
    """
    from .._build.build import build_skill
    from .._format.codecs.base import options_from_strings
    from .._format.fingerprint import short

    options = options_from_strings(list(codec_params))
    for key, value in (("density", density), ("rank", rank), ("max_rel_error", max_rel_error)):
        if value is not None:
            options[key] = value

    res = build_skill(
        base,
        general=general,
        finetuned=finetuned,
        adapter=adapter,
        output=output,
        name=name,
        version=version_,
        dataset_size=dataset_size,
        dataset_unit=dataset_unit,
        description=description,
        license=license_,
        codec=codec,
        codec_options=options,
        requires=dict(split_requirement(r) for r in requires),
        conflicts=dict(split_requirement(r) for r in conflicts),
        calibration=calibration,
        min_retention=min_retention,
        margin=margin,
        max_evaluations=max_evaluations,
        progress=RichProgress(),
    )
    m = res.manifest
    ratio = res.raw_bytes / res.stored_bytes if res.stored_bytes else 0.0
    out.print(
        f"Built [bold]{m.label}[/] for base {short(m.base_fingerprint)}: {len(m.tensors)} tensors, "
        f"{res.stored_bytes / 2**20:.1f} MiB ({ratio:.2f}x smaller than fp32 τ) → {res.path}"
    )
    _print_report(m.report(), limit=5 if m.lossy else 0, calibration=m.calibration)
    if codec == "auto" and calibration is None:
        out.print(
            "  note: `auto` chose per tensor by ‖τ̂−τ‖/‖τ‖; with `--calibration HELDOUT` it chooses by the share "
            "of the fine-tune's gain the skill keeps, usually much smaller."
        )


def _print_report(rows: list, *, limit: int, calibration: object = None) -> None:
    """The compression summary line, the calibration's, and up to ``limit`` tensors, worst relative error first."""
    from .._format.codecs.report import calibration_line, format_error, is_lossy, summary, worst_first

    out.print(f"  {'storage':<12} {summary(rows)}")
    line = calibration_line(calibration, lossy=is_lossy(rows))
    if line:
        out.print(f"  {'calibration':<12} {safe(line)}")
    if limit <= 0 or not rows:
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col, justify in (("tensor", "left"), ("codec", "left"), ("ratio", "right"), ("rel error", "right")):
        table.add_column(col, justify=cast(JustifyMethod, justify))
    ranked = worst_first(rows)
    for r in ranked[:limit]:
        table.add_row(r.name, r.codec, f"{r.ratio:.1f}x", format_error(r.rel_error))
    out.print(table)
    if len(ranked) > limit:
        out.print(f"  … {len(ranked) - limit} more tensors (`tvreg info --tensors all` lists them)")


@main.command()
@click.argument("path")
@click.option("--short", "short_", is_flag=True, help="Print the 12-character prefix only.")
def fingerprint(path, short_):
    """Print the content fingerprint of a model (independent of sharding and file names)."""
    from .._format.fingerprint import fingerprint as fp
    from .._format.fingerprint import short

    value = fp(path, progress=RichProgress())
    out.print(short(value) if short_ else value)


@main.command()
@click.argument("target", metavar="NAME_OR_PATH")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--registry", metavar="URL", help="Registry to ask (default: the logged-in one).")
@click.option(
    "--tensors",
    "tensors",
    default="10",
    show_default=True,
    metavar="N|all",
    help="How many tensors of the compression report to list, worst relative error first.",
)
def info(target, fmt, registry, tensors):
    """Show a skill: a local .tvskill's manifest (header only), or `ns/skill[@version]` from the registry."""
    from .._registry.refs import looks_like_ref

    if tensors == "all":
        limit = 1 << 62
    elif tensors.isdigit():
        limit = int(tensors)
    else:
        raise click.BadParameter("give a number of tensors or `all`.", param_hint="--tensors")
    if os.path.isfile(target) or not looks_like_ref(target):
        _local_info(target, fmt, limit)
    else:
        _remote_info(target, fmt, registry, limit)


def _print_profile(sketch) -> None:
    """‖τ‖ per layer as a bar chart: where the skill changed the model."""
    profile = sketch.layer_norms()
    top = max(profile.values(), default=0.0) or 1.0
    out.print(f"  {'norm profile':<12} ‖τ‖ = {sketch.norm:.4g} over {len(profile)} layers")
    width = max((len(k) for k in profile), default=0)
    for layer, norm in profile.items():
        finite = math.isfinite(norm) and math.isfinite(top)
        bar = "█" * max(1, round(30 * norm / top)) if finite and norm > 0 else ""
        out.print(f"    {layer:<{width}}  {norm:>10.4g}  {bar}")


_CARD_LINES = 40
# Terminal controls and bidi overrides in a card could rewrite the terminal or reorder text.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _print_card(card: str | None) -> None:
    """The skill card (README.md) as plain text, control characters made visible, first lines only."""
    if not card:
        out.print(f"  {'card':<12} - (published without a README.md)")
        return
    lines = _CONTROL.sub(lambda m: f"<U+{ord(m.group(0)):04X}>", card).splitlines()
    out.print(f"  {'card':<12} README.md, {len(lines)} lines")
    for line in lines[:_CARD_LINES]:
        out.print("    " + line, markup=False, highlight=False)
    if len(lines) > _CARD_LINES:
        out.print(f"    … {len(lines) - _CARD_LINES} more lines on the registry's skill page")


def _profile_json(sketch) -> dict:
    return {"norm": sketch.norm, "norm_profile": sketch.layer_norms()}


def _local_info(path: str, fmt: str, limit: int) -> None:
    from .._format.artifact import Artifact
    from .._format.sketch import sketch_for

    if not os.path.isfile(path):
        raise click.BadParameter(f"file `{path}` does not exist.", param_hint="NAME_OR_PATH")
    sketch = sketch_for(path, progress=RichProgress())
    with Artifact(path) as art:
        m = art.manifest
        if fmt == "json":
            out.print_json(json.dumps({**json.loads(m.to_json()), **_profile_json(sketch)}))
            return
        stored = sum(t.stored_bytes for t in m.tensors.values())
        out.print(f"[bold]{safe(m.label)}[/]  ({safe(m.kind)})")
        for key, value in (
            ("description", m.description or "-"),
            ("base", m.base_fingerprint),
            ("dataset", f"{m.dataset_size} {m.dataset_unit}" if m.dataset_size else "unknown"),
            ("license", m.license or "-"),
            ("tensors", f"{len(m.tensors)} ({stored / 2**20:.1f} MiB stored)"),
            ("built by", m.created_by),
        ):
            out.print(f"  {key:<12} {safe(value)}")
        _print_report(m.report(), limit=limit, calibration=m.calibration)
        _print_profile(sketch)


def _remote_info(target: str, fmt: str, registry: str | None, limit: int) -> None:
    from .._registry.client import client_for
    from .._registry.refs import parse_ref

    ref = parse_ref(target)
    sketch = None
    trust_view = None
    with client_for(registry) as client:
        data = client.version(ref, ref.version) if ref.version else client.skill(ref)
        card_version = ref.version or (data.get("dist_tags") or {}).get("latest")
        card = client.card(ref, card_version) if card_version else None
        if ref.version:
            from .keys import trust_report

            trust_view = trust_report(client, ref, ref.version, data.get("digest", ""))
        if ref.version and data.get("sketch"):
            from .._env.check import registry_sketch
            from ..errors import SketchError

            try:
                sketch = registry_sketch(client, ref, data, download=False)
            except (SketchError, RegistryError) as exc:
                err.print(f"[yellow]note:[/] no norm profile: {safe(exc.message)}", soft_wrap=True)
    if fmt == "json":
        extra = {"trust": trust_view.as_json()} if trust_view is not None else {}
        out.print_json(json.dumps({**data, **(_profile_json(sketch) if sketch else {}), "card": card, **extra}))
        return
    if ref.version:
        yanked = f"yes ({data.get('yanked_reason') or 'no reason given'})" if data.get("yanked") else "no"
        size = data.get("dataset_size")
        out.print(f"[bold]{safe(ref)}[/]  ({safe(data.get('kind', 'task_vector'))})")
        for key, value in (
            ("description", (data.get("manifest") or {}).get("description") or "-"),
            ("base", data.get("base_fingerprint")),
            ("dataset", f"{size} {data.get('dataset_unit')}" if size else "unknown"),
            ("license", (data.get("manifest") or {}).get("license") or "-"),
            ("digest", data.get("digest")),
            ("size", human_size(data.get("size"))),
            ("published", f"{data.get('published_at')} by {data.get('publisher')}"),
            ("yanked", yanked),
        ):
            out.print(f"  {key:<12} {safe(value)}")
        if trust_view is not None:
            trust_view.print()
        tensors = (data.get("manifest") or {}).get("tensors")
        if isinstance(tensors, dict):
            from .._format.codecs.report import lines_from_json

            _print_report(
                lines_from_json(tensors), limit=limit, calibration=(data.get("manifest") or {}).get("calibration")
            )
        if sketch is not None:
            _print_profile(sketch)
        else:
            out.print(f"  {'norm profile':<12} - (published without a sketch)")
        _print_card(card)
        return
    tags = ", ".join(f"{k}={v}" for k, v in sorted((data.get("dist_tags") or {}).items())) or "-"
    out.print(f"[bold]{safe(data.get('name', ref.name))}[/]{'  (private)' if data.get('private') else ''}")
    out.print(f"  {'description':<12} {safe(data.get('description') or '-')}")
    out.print(f"  {'tags':<12} {safe(tags)}")
    table = Table(box=None, header_style="bold")
    for col in ("version", "base", "size", "storage", "published", "by", "yanked"):
        table.add_column(col)
    for v in data.get("versions", []):
        yanked = (v.get("yanked_reason") or "yes") if v.get("yanked") else ""
        table.add_row(
            *(
                safe(cell)
                for cell in (
                    v.get("version", ""),
                    str(v.get("base_fingerprint", ""))[:12],  # fingerprint.short, without loading torch
                    human_size(v.get("size")),
                    _storage_word(v.get("manifest")),
                    str(v.get("published_at", ""))[:19],
                    str(v.get("publisher", "")),
                    yanked,
                )
            )
        )
    out.print(table)
    _print_card(card)


def _storage_word(manifest: object) -> str:
    """``lossy``, ``lossless`` or the calibration's short line for a version listing, from its manifest when sent."""
    from .._format.codecs.report import calibration_line, is_lossy, lines_from_json

    tensors = manifest.get("tensors") if isinstance(manifest, dict) else None
    if not isinstance(manifest, dict) or not isinstance(tensors, dict):
        return "?"
    lossy = is_lossy(lines_from_json(tensors))
    return calibration_line(manifest.get("calibration"), lossy=lossy, detail=False) or ("lossy" if lossy else "lossless")
