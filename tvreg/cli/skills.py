"""Commands about one skill artifact: build, fingerprint, info."""

from __future__ import annotations

import json
import os

import click
from rich.table import Table

from .app import RichProgress, human_size, main, out, split_requirement


@main.command()
@click.option("--base", metavar="PRE", help="The pretrained model θ_pre (directory or cached Hub id).")
@click.option(
    "--general",
    metavar="G",
    help="Instead of --base: the general model G, for a WiSE-FT delta θ_CFT − θ_G (kind delta_from_general).",
)
@click.option("--finetuned", metavar="FT", help="The fine-tuned model θ_D (directory or cached Hub id).")
@click.option("--adapter", metavar="DIR", help="A PEFT LoRA adapter trained on PRE (instead of --finetuned).")
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
    "--codec", default="exact", show_default=True, help="How tensors are stored (exact is lossless)."
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
    requires,
    conflicts,
    output,
):
    """Build a skill artifact from a fine-tuned model or a LoRA adapter."""
    from ..build import build_skill
    from ..fingerprint import short

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
        requires=dict(split_requirement(r) for r in requires),
        conflicts=dict(split_requirement(r) for r in conflicts),
        progress=RichProgress(),
    )
    m = res.manifest
    ratio = res.raw_bytes / res.stored_bytes if res.stored_bytes else 0.0
    out.print(
        f"Built [bold]{m.label}[/] for base {short(m.base_fingerprint)}: {len(m.tensors)} tensors, "
        f"{res.stored_bytes / 2**20:.1f} MiB ({ratio:.2f}x smaller than fp32 τ) → {res.path}"
    )


@main.command()
@click.argument("path")
@click.option("--short", "short_", is_flag=True, help="Print the 12-character prefix only.")
def fingerprint(path, short_):
    """Print the content fingerprint of a model (independent of sharding and file names)."""
    from ..fingerprint import fingerprint as fp
    from ..fingerprint import short

    value = fp(path, progress=RichProgress())
    out.print(short(value) if short_ else value)


@main.command()
@click.argument("target", metavar="NAME_OR_PATH")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--registry", metavar="URL", help="Registry to ask (default: the logged-in one).")
def info(target, fmt, registry):
    """Show a skill: a local .tvskill's manifest (header only), or `ns/skill[@version]` from the registry."""
    from ..refs import looks_like_ref

    if os.path.isfile(target) or not looks_like_ref(target):
        _local_info(target, fmt)
    else:
        _remote_info(target, fmt, registry)


def _print_profile(sketch) -> None:
    """‖τ‖ per layer as a bar chart: where the skill changed the model."""
    profile = sketch.layer_norms()
    top = max(profile.values(), default=0.0) or 1.0
    out.print(f"  {'norm profile':<12} ‖τ‖ = {sketch.norm:.4g} over {len(profile)} layers")
    width = max((len(k) for k in profile), default=0)
    for layer, norm in profile.items():
        bar = "█" * max(1, round(30 * norm / top)) if norm > 0 else ""
        out.print(f"    {layer:<{width}}  {norm:>10.4g}  {bar}")


def _profile_json(sketch) -> dict:
    return {"norm": sketch.norm, "norm_profile": sketch.layer_norms()}


def _local_info(path: str, fmt: str) -> None:
    from ..artifact import Artifact
    from ..sketch import sketch_for

    if not os.path.isfile(path):
        raise click.BadParameter(f"file `{path}` does not exist.", param_hint="NAME_OR_PATH")
    sketch = sketch_for(path, progress=RichProgress())
    with Artifact(path) as art:
        m = art.manifest
        if fmt == "json":
            out.print_json(json.dumps({**json.loads(m.to_json()), **_profile_json(sketch)}))
            return
        stored = sum(t.stored_bytes for t in m.tensors.values())
        out.print(f"[bold]{m.label}[/]  ({m.kind})")
        for key, value in (
            ("description", m.description or "-"),
            ("base", m.base_fingerprint),
            ("dataset", f"{m.dataset_size} {m.dataset_unit}" if m.dataset_size else "unknown"),
            ("license", m.license or "-"),
            ("tensors", f"{len(m.tensors)} ({stored / 2**20:.1f} MiB stored)"),
            ("codecs", ", ".join(sorted({t.codec for t in m.tensors.values()}))),
            ("built by", m.created_by),
        ):
            out.print(f"  {key:<12} {value}")
        _print_profile(sketch)


def _remote_info(target: str, fmt: str, registry: str | None) -> None:
    from ..client import client_for
    from ..fingerprint import short
    from ..refs import parse_ref

    ref = parse_ref(target)
    sketch = None
    with client_for(registry) as client:
        data = client.version(ref, ref.version) if ref.version else client.skill(ref)
        if ref.version and data.get("sketch"):
            from ..check import registry_sketch

            sketch = registry_sketch(client, ref, data, download=False)
    if fmt == "json":
        out.print_json(json.dumps({**data, **(_profile_json(sketch) if sketch else {})}))
        return
    if ref.version:
        yanked = f"yes ({data.get('yanked_reason') or 'no reason given'})" if data.get("yanked") else "no"
        size = data.get("dataset_size")
        out.print(f"[bold]{ref}[/]  ({data.get('kind', 'task_vector')})")
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
            out.print(f"  {key:<12} {value}")
        if sketch is not None:
            _print_profile(sketch)
        else:
            out.print(f"  {'norm profile':<12} - (published without a sketch)")
        return
    tags = ", ".join(f"{k}={v}" for k, v in sorted((data.get("dist_tags") or {}).items())) or "-"
    out.print(f"[bold]{data.get('name', ref.name)}[/]{'  (private)' if data.get('private') else ''}")
    out.print(f"  {'description':<12} {data.get('description') or '-'}")
    out.print(f"  {'tags':<12} {tags}")
    table = Table(box=None, header_style="bold")
    for col in ("version", "base", "size", "published", "by", "yanked"):
        table.add_column(col)
    for v in data.get("versions", []):
        yanked = (v.get("yanked_reason") or "yes") if v.get("yanked") else ""
        table.add_row(
            v["version"],
            short(v.get("base_fingerprint", "")),
            human_size(v.get("size")),
            str(v.get("published_at", ""))[:19],
            str(v.get("publisher", "")),
            yanked,
        )
    out.print(table)
