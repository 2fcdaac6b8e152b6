"""The ``tvreg`` command line: parse options, call the library, print with rich.

No logic lives here. Errors from the library (:class:`~tvreg.errors.TvregError`) are
printed as ``error: <sentence>`` plus ``hint:`` lines, with the family's exit code
(1 for failures, 2 for bad usage, 130 for interrupts) and no traceback unless
``--debug``.
"""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import asdict
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.progress import Progress as RichBar
from rich.table import Table

from . import __version__
from .errors import TvregError
from .progress import Progress

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


class RichProgress(Progress):
    """Shows each long step as a transient rich progress bar on stderr."""

    def __init__(self) -> None:
        self._bar: RichBar | None = None
        self._task = None

    def task(self, description, total):
        self.done()
        if not err.is_terminal:
            return
        self._bar = RichBar(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task(description, total=total)

    def advance(self, amount):
        if self._bar is not None:
            self._bar.advance(self._task, amount)

    def done(self):
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def note(self, message):
        err.print(f"[yellow]note:[/] {message}")


def _fail(exc: TvregError, debug: bool) -> None:
    if debug:
        err.print_exception()
    err.print(f"[bold red]error:[/] {exc.message}", soft_wrap=True)
    for hint in exc.hints:
        err.print(f"[cyan]hint:[/] {hint}", soft_wrap=True)
    sys.exit(exc.exit_code)


class _Group(click.Group):
    def invoke(self, ctx):
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except TvregError as exc:
            _fail(exc, debug)
        except KeyboardInterrupt:
            err.print("[bold red]error:[/] interrupted.")
            sys.exit(130)


def _sigterm(signum, frame):
    raise KeyboardInterrupt


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="tvreg")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
def main(debug: bool) -> None:
    """tvreg: a package manager for task vectors.

    Build skills (task vectors τ = θ_finetuned − θ_pretrained) from checkpoints or LoRA
    adapters, and install them onto a general model G: θ = θ_G + Σ ω_k τ_k.
    """
    signal.signal(signal.SIGTERM, _sigterm)


@main.command()
@click.option(
    "--base", required=True, metavar="PRE", help="The pretrained model θ_pre (directory or cached Hub id)."
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
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the .tvskill."
)
def build(
    base, finetuned, adapter, name, version_, dataset_size, dataset_unit, description, license_, codec, output
):
    """Build a skill artifact from a fine-tuned model or a LoRA adapter."""
    from .build import build_skill
    from .fingerprint import short

    res = build_skill(
        base,
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
    from .fingerprint import fingerprint as fp
    from .fingerprint import short

    value = fp(path, progress=RichProgress())
    out.print(short(value) if short_ else value)


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
    from .environment import init_environment
    from .fingerprint import short

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


def _parse_weights(values: tuple[str, ...]) -> dict[str, float]:
    weights: dict[str, float] = {}
    for item in values:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            weights[name] = float(value)
        except ValueError:
            raise click.BadParameter(f"expected NAME=FLOAT, got {item!r}", param_hint="--weight") from None
    return weights


@main.command()
@click.argument("skills", nargs=-1, type=click.Path(dir_okay=False))
@click.option(
    "--into", "into", required=True, type=click.Path(file_okay=False), help="The model environment."
)
@click.option(
    "--weight", "weights", multiple=True, metavar="NAME=ω", help="Merge weight of one skill (repeatable)."
)
@click.option("--base", metavar="PRE", help="Initialise MODEL's base on the fly (see `tvreg init`).")
@click.option("--general-size", type=click.IntRange(min=1), help="|G|, for the default ω = |D|/|G|.")
@click.option("--dry-run", is_flag=True, help="Check everything and show the plan; write nothing.")
def install(skills, into, weights, base, general_size, dry_run):
    """Install skills into a model: θ = θ_G + Σ ω_k τ_k, recomputed from pristine G."""
    from .install import install as do_install

    res = do_install(
        list(skills),
        into=into,
        weights=_parse_weights(weights),
        base=base,
        general_size=general_size,
        dry_run=dry_run,
        progress=RichProgress(),
    )
    table = Table(title=None, box=None, show_header=True, header_style="bold")
    for col in ("skill", "version", "ω", "from"):
        table.add_column(col)
    for s in res.skills:
        table.add_row(s.name, s.version, f"{s.weight:.6g}", s.weight_source)
    out.print(table)
    for note in res.notes:
        out.print(f"[yellow]note:[/] {note}")
    if dry_run:
        out.print(
            f"Would install {len(res.skills)} skill(s) into {res.model_dir} (dry run, nothing written)."
        )
    else:
        out.print(
            f"Installed {len(res.skills)} skill(s) into {res.model_dir} in {res.seconds:.1f} s "
            f"({res.bytes_written / 2**20:.1f} MiB written; weights {res.output_fingerprint[:12]})."
        )


@main.command(name="list")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def list_(model_dir, fmt):
    """List the skills installed in a model environment."""
    from .environment import require_lock

    lock = require_lock(Path(model_dir))
    if fmt == "json":
        out.print_json(json.dumps([asdict(s) for s in lock.skills]))
        return
    table = Table(box=None, header_style="bold")
    for col in ("skill", "version", "ω", "from", "digest"):
        table.add_column(col)
    for s in lock.skills:
        table.add_row(s.name, s.version, f"{s.weight:.6g}", s.weight_source, s.digest[:19])
    out.print(table)


@main.command()
@click.argument("artifact", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def info(artifact, fmt):
    """Show a skill artifact's manifest (reads the header only)."""
    from .artifact import Artifact

    with Artifact(artifact) as art:
        m = art.manifest
        if fmt == "json":
            out.print_json(m.to_json())
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


if __name__ == "__main__":
    main()
