"""Commands on model environments: init, install, list."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import click
from rich.table import Table

from .app import RichProgress, main, out, parse_weights
from .check import interference_printer
from .environment_cmds import (
    DRY_RUN,
    HUB_ENDPOINT,
    NAMESPACE,
    OFFLINE,
    REGISTRY,
    RESOLUTION,
    into_dir,
    print_installed,
    print_nothing,
    print_plan,
    watch,
)


@main.command()
@click.argument("model_dir", required=False, type=click.Path(exists=True, file_okay=False))
@click.option("--into", "into", type=click.Path(exists=True, file_okay=False), help="G's model directory.")
@click.option("--base", metavar="PRE", help="The pretrained model G was fine-tuned from.")
@click.option("--base-fingerprint", metavar="HEX", help="θ_pre's fingerprint, if θ_pre is not at hand.")
@click.option("--general-size", type=click.IntRange(min=1), help="|G|: size of G's instruction-tuning set.")
@click.option(
    "--general-size-unit", type=click.Choice(["examples", "tokens"]), default="examples", show_default=True
)
def init(model_dir, into, base, base_fingerprint, general_size, general_size_unit):
    """Make MODEL_DIR (a model directory of G; or --into) a tvreg model environment.

    On a copy of G holding a `tvreg.lock` from another machine, it keeps G in this
    machine's store and leaves the lock as it is.
    """
    if model_dir is not None and into is not None:
        raise click.UsageError("give the model environment either as MODEL_DIR or with --into (not both).")
    model_dir = model_dir or into or "."
    from .._env.environment import init_environment
    from .._format.fingerprint import short

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


def merge_param_options(command: Callable) -> Callable:
    """Add one flag per merge parameter of :data:`tvreg._merge.params.PARAMS`, help and defaults from its row.

    Each flag's value reaches the command as a keyword named after the parameter
    (``None`` when not given), so the command passes them on as ``method_params``.
    """
    from .._merge.params import PARAMS, defaults_text, flag

    for name, row in reversed(PARAMS.items()):
        text = f"{row.help} [{defaults_text(name)}]"
        if row.kind is bool:
            decls = [f"{flag(name)}/--no-{flag(name)[2:]}", name]
            command = click.option(*decls, default=None, help=text)(command)
            continue
        kind = {int: click.IntRange(min=0), float: float}.get(row.kind, str)
        command = click.option(flag(name), name, type=kind, metavar=row.metavar, help=text)(command)
    return command


@main.command()
@click.argument("skills", nargs=-1, metavar="SKILL...")
@click.option(
    "--into",
    "into",
    type=click.Path(file_okay=False),
    help="The model environment (default: the current directory when it holds tvreg.lock).",
)
@click.option(
    "-r", "--requirements", "requirements", multiple=True, metavar="FILE",
    help="Install the skills listed in FILE (`tvreg list --format freeze` output).",
)  # fmt: skip
@NAMESPACE
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
@HUB_ENDPOINT
@RESOLUTION
@OFFLINE
@click.option(
    "--method",
    metavar="NAME",
    help="Merge method: task_arithmetic (default), ties, dare_ties, dare_linear, average, linear, wise_ft "
    "(default: the one tvreg.lock records).",
)
@merge_param_options
@click.option(
    "--device",
    type=click.Choice(["auto", "cuda", "cpu"]),
    default="auto",
    show_default=True,
    help="Merge on the GPU (fused Triton kernel) or the CPU; auto picks CUDA when available.",
)
@click.option(
    "--gate", "gate", metavar="MODULE:FN",
    help="Evaluate the staged model with this hook (as `tvreg sweep`) before it replaces the model.",
)  # fmt: skip
@click.option(
    "--require", "requires", multiple=True, metavar="METRIC>=X",
    help="What the --gate hook must measure, e.g. refusal_rate>=0.8 (repeatable).",
)  # fmt: skip
def install(
    skills,
    into,
    requirements,
    namespace,
    weights,
    base,
    general_size,
    output_dtype,
    dry_run,
    registry,
    resolution,
    offline,
    method,
    device,
    gate,
    requires,
    **method_params,
):
    """Install skills into a model: θ = θ_G + Σ ω_k τ_k, recomputed from pristine G.

    Each SKILL is a registry requirement — `ns/skill`, `ns/skill@^2.1`, `ns/skill@1.2.3`,
    `ns/skill@beta` (a dist-tag), or a bare `skill` looked up in your namespaces — or a
    file (`*.tvskill`, `./…`, `/…`). Requirements, the skills already installed and every
    skill's `requires` are resolved together for the model's base. A `tvreg.toml` policy
    beside the lock is enforced; `--gate` checks the staged model before the swap.
    """
    from .._env.policy import make_gate

    if requires and not gate:
        raise click.UsageError("--require needs --gate MODULE:FN (the hook that measures it).")
    install_gate = make_gate(gate, requires) if gate else None

    progress = RichProgress()
    weights = parse_weights(weights)
    args = list(skills)
    for path in requirements:
        more, more_weights = read_requirements(path)
        args += more
        weights = {**more_weights, **weights}
    target = into_dir(into)
    if target is not None:
        from .._env.policy import load_policy

        load_policy(target)  # a bad tvreg.toml fails before any other work
    if target is not None and not dry_run and install_gate is None and Path(target).is_dir():
        from .._env import noop

        found = noop.check_install(
            Path(target).resolve(), args, weights=weights, registry=registry, resolution=resolution,
            offline=offline, method=method, method_params=method_params, output_dtype=output_dtype,
            settings_given=base is not None or general_size is not None,
        )  # fmt: skip
        if found is not None:
            print_nothing(found)
            return
    from .._env.operations import install as do_install

    res = do_install(
        args,
        into=target,
        weights=weights,
        base=base,
        general_size=general_size,
        method=method,
        method_params=method_params,
        device=device,
        output_dtype=output_dtype,
        dry_run=dry_run,
        registry=registry,
        resolution=resolution,
        offline=offline,
        namespaces=list(namespace) or None,
        gate=install_gate,
        progress=watch(progress, target),
        on_interference=interference_printer(args, into=target),
    )
    if res.dry_run:
        print_plan(res.plan)
        return
    if not res.changed:
        print_nothing(res)
        return
    print_installed(res)
    out.print(
        f"Installed {len(res.skills)} skill(s) into {res.model_dir} in {res.seconds:.1f} s "
        f"({res.bytes_written / 2**20:.1f} MiB written; weights {res.output_fingerprint[:12]})."
    )


def read_requirements(path: str) -> tuple[list[str], dict[str, float]]:
    """The skills and weights of a requirements file (`tvreg list --format freeze` output).

    One skill per line: a requirement or a file, optionally `--weight=ω`; `#` starts a comment.
    """
    from ..errors import ModelEnvironmentError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelEnvironmentError(f"cannot read the requirements file `{path}`: {exc.strerror or exc}.") from exc
    args: list[str] = []
    weights: dict[str, float] = {}
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        args.append(words[0])
        for word in words[1:]:
            key, _, value = word.partition("=")
            try:
                if key != "--weight":
                    raise ValueError
                weights[_identity_of(words[0])] = float(value)
            except ValueError:
                raise ModelEnvironmentError(
                    f"`{path}` line {number}: unknown option `{word}`.",
                    hints=["a line is `SKILL [--weight=ω]`, as `tvreg list --format freeze` writes it"],
                ) from None
    return args, weights


def _identity_of(arg: str) -> str:
    from .._format.artifact import Artifact
    from .._registry.fetch import is_file_arg

    if is_file_arg(arg):
        with Artifact(Path(arg).expanduser()) as art:
            return art.manifest.name
    return arg.partition("@")[0]


@main.command(name="list")
@click.argument("model_dir", required=False, type=click.Path(exists=True, file_okay=False))
@click.option("--into", "into", type=click.Path(exists=True, file_okay=False), help="The model environment.")
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json", "freeze"]), default="text", show_default=True
)
def list_(model_dir, into, fmt):
    """List the skills installed in a model environment (MODEL_DIR or --into; default: here).

    Skills are named by identity (`ns/skill` from a registry, the manifest name from a file).
    `--format freeze` prints one line per skill that `tvreg install -r FILE` installs back
    unchanged: the pinned requirement (or the stored file), `--weight=ω` when you set ω,
    and the digest as a comment, like `pip freeze`.
    """
    from .._env.environment import require_lock
    from .._env.store import artifact_path

    if model_dir is not None and into is not None:
        raise click.UsageError("give the model environment either as MODEL_DIR or with --into (not both).")
    lock = require_lock(into_dir(model_dir or into, required=True))
    if fmt == "json":
        out.print_json(json.dumps([{"id": s.id, **asdict(s)} for s in lock.skills]))
        return
    if fmt == "freeze":
        for s in lock.skills:
            what = f"{s.id}@{s.version}" if s.from_registry else str(artifact_path(s.digest))
            weight = f" --weight={s.weight!r}" if s.weight_source == "user" else ""
            out.print(f"{what}{weight}  # {s.id}@{s.version} ω={s.weight:.6g} {s.digest}", markup=False)
        return
    table = Table(box=None, header_style="bold")
    signed = any(s.signed_by for s in lock.skills)
    for col in ("skill", "version", "ω", "from", "digest") + (("signed by",) if signed else ()):
        table.add_column(col)
    for s in lock.skills:
        extra = ((s.signed_by[:19] + "…") if s.signed_by else "unsigned",) if signed else ()
        table.add_row(s.id, s.version, f"{s.weight:.6g}", s.weight_source, s.digest[:19], *extra)
    out.print(table)
