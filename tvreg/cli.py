"""The ``tvreg`` command line: parse options, call the library, print with rich.

No logic lives here. Errors from the library (:class:`~tvreg.errors.TvregError`) are
printed as ``error: <sentence>`` plus ``hint:`` lines, with the family's exit code
(1 for failures, 2 for bad usage, 130 for interrupts) and no traceback unless
``--debug``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
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
out = Console(highlight=False, soft_wrap=True)


class RichProgress(Progress):
    """Shows each step that lasts over a second as a transient rich progress bar on stderr."""

    delay = 1.0

    def __init__(self) -> None:
        self._bar: RichBar | None = None
        self._task = None
        self._pending: tuple[str, int | None, float] | None = None
        self._completed = 0

    def task(self, description, total):
        self.done()
        self._pending = (description, total, time.monotonic())
        self._completed = 0

    def _start(self) -> None:
        description, total, _ = self._pending
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
        self._task = self._bar.add_task(description, total=total, completed=self._completed)

    def advance(self, amount):
        if self._bar is not None:
            self._bar.advance(self._task, amount)
            return
        self._completed += amount
        if (
            self._pending is not None
            and err.is_terminal
            and time.monotonic() - self._pending[2] >= self.delay
        ):
            self._start()

    def done(self):
        self._pending = None
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def note(self, message):
        err.print(f"[yellow]note:[/] {message}", soft_wrap=True)

    def warn(self, message):
        err.print(f"[bold yellow]warning:[/] {message}", soft_wrap=True)


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


def _split_requirement(text: str) -> tuple[str, str]:
    name, _, spec = text.partition("@")
    return name, spec


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
        requires=dict(_split_requirement(r) for r in requires),
        conflicts=dict(_split_requirement(r) for r in conflicts),
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
@click.argument("skills", nargs=-1, metavar="SKILL...")
@click.option(
    "--into", "into", required=True, type=click.Path(file_okay=False), help="The model environment."
)
@click.option(
    "--weight", "weights", multiple=True, metavar="NAME=ω", help="Merge weight of one skill (repeatable)."
)
@click.option("--base", metavar="PRE", help="Initialise MODEL's base on the fly (see `tvreg init`).")
@click.option("--general-size", type=click.IntRange(min=1), help="|G|, for the default ω = |D|/|G|.")
@click.option("--dry-run", is_flag=True, help="Check everything and show the plan; write nothing.")
@click.option(
    "--registry", metavar="URL", help="Registry to fetch named skills from (default: the logged-in one)."
)
@click.option(
    "--resolution",
    type=click.Choice(["highest", "lowest"]),
    default="highest",
    show_default=True,
    help="Pick the highest versions, or the lowest (to test lower bounds).",
)
def install(skills, into, weights, base, general_size, dry_run, registry, resolution):
    """Install skills into a model: θ = θ_G + Σ ω_k τ_k, recomputed from pristine G.

    Each SKILL is a .tvskill file, or a registry requirement: `ns/skill`, `ns/skill@^2.1`,
    `ns/skill@~1.4`, `ns/skill@>=1.2 <2`, `ns/skill@1.2.3` or `ns/skill@beta` (a dist-tag).
    Requirements, the skills already installed and every skill's `requires` are resolved
    together for the model's base; named skills are downloaded into the verified cache.
    """
    from .fetch import fetch_for_install
    from .install import install as do_install

    progress = RichProgress()
    paths, sources = fetch_for_install(
        list(skills), into=into, base=base, registry=registry, resolution=resolution, progress=progress
    )
    res = do_install(
        paths,
        into=into,
        weights=_parse_weights(weights),
        base=base,
        general_size=general_size,
        dry_run=dry_run,
        sources=sources,
        progress=progress,
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
@click.argument("target", metavar="NAME_OR_PATH")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--registry", metavar="URL", help="Registry to ask (default: the logged-in one).")
def info(target, fmt, registry):
    """Show a skill: a local .tvskill's manifest (header only), or `ns/skill[@version]` from the registry."""
    from .refs import looks_like_ref

    if os.path.isfile(target) or not looks_like_ref(target):
        _local_info(target, fmt)
    else:
        _remote_info(target, fmt, registry)


def _local_info(path: str, fmt: str) -> None:
    from .artifact import Artifact

    if not os.path.isfile(path):
        raise click.BadParameter(f"file `{path}` does not exist.", param_hint="NAME_OR_PATH")
    with Artifact(path) as art:
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


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _remote_info(target: str, fmt: str, registry: str | None) -> None:
    from .client import client_for
    from .fingerprint import short
    from .refs import parse_ref

    ref = parse_ref(target)
    with client_for(registry) as client:
        data = client.version(ref, ref.version) if ref.version else client.skill(ref)
    if fmt == "json":
        out.print_json(json.dumps(data))
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
            ("size", _size(data.get("size"))),
            ("published", f"{data.get('published_at')} by {data.get('publisher')}"),
            ("yanked", yanked),
        ):
            out.print(f"  {key:<12} {value}")
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
            _size(v.get("size")),
            str(v.get("published_at", ""))[:19],
            str(v.get("publisher", "")),
            yanked,
        )
    out.print(table)


# -- registry account -------------------------------------------------------------------------


@main.command()
@click.option(
    "--registry", metavar="URL", help="The registry's address (default: TVREG_REGISTRY or the last one)."
)
@click.option(
    "--token", metavar="TOKEN", help="An API token (`tvr_...`); prompted for when omitted, `-` reads stdin."
)
def login(registry, token):
    """Log in to a registry: check the token with /whoami, then save it (0600) for later commands."""
    from .client import RegistryClient
    from .config import config_path, remember_login, resolve

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
    out.print(f"Logged in to {url} as [bold]{who.get('user')}[/] (token saved in {config_path()}).")


@main.command()
@click.option("--registry", metavar="URL", help="The registry to log out of (default: the current one).")
def logout(registry):
    """Forget the saved token of a registry."""
    from .config import forget_login, resolve

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
    from .client import client_for

    with client_for(registry) as client:
        who = client.whoami()
        url = client.url
    out.print(f"[bold]{who.get('user')}[/] on {url}")
    teams = ", ".join(f"{t.get('team')} ({t.get('role')})" for t in who.get("teams", [])) or "-"
    out.print(f"  {'teams':<11} {teams}")
    out.print(f"  {'namespaces':<11} {', '.join(who.get('namespaces', [])) or '-'}")


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
def publish(project_dir, dry_run, registry, tag, no_tag, chunk_size):
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
    from .publish import publish as do_publish

    res = do_publish(
        project_dir,
        registry=registry,
        tag=None if no_tag else tag,
        dry_run=dry_run,
        chunk_size=chunk_size,
        progress=RichProgress(),
    )
    what = f"[bold]{res.label}[/] ({res.digest[:19]}…, {_size(res.size)})"
    if res.status == "dry-run":
        out.print(f"Would publish {what} to {res.registry} (dry run, nothing uploaded).")
    elif res.status == "unchanged":
        out.print(f"{what} is already on {res.registry} with these exact bytes; nothing to do.")
    else:
        tagged = f", tagged {res.tag}" if res.tag else ""
        out.print(f"Published {what} to {res.registry}{tagged}.")


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
    from .client import client_for

    if base and into:
        raise click.UsageError("give one of `--base` and `--into`.")
    if into:
        from .environment import require_lock

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
        name = item.get("name", "") + (" (private)" if item.get("private") else "")
        table.add_row(
            name, item.get("latest") or "-", str(item.get("versions", "")), item.get("description") or ""
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
    from .client import client_for
    from .refs import parse_ref

    ref = parse_ref(target, require_version=True)
    with client_for(registry) as client:
        client.yank(ref, ref.version, reason)
    out.print(f"Yanked {ref} ({reason}).")


@main.command()
@click.argument("target", metavar="NAME@VERSION")
@click.option("--registry", metavar="URL")
def unyank(target, registry):
    """Undo a yank."""
    from .client import client_for
    from .refs import parse_ref

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
    from .client import client_for
    from .refs import parse_ref

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
    from .client import client_for
    from .refs import parse_ref

    ref = parse_ref(name, allow_version=False)
    with client_for(registry) as client:
        client.delete_tag(ref, tag_name)
    out.print(f"{ref.name}: removed tag {tag_name}.")


# -- download cache ---------------------------------------------------------------------------


@main.group()
def cache():
    """The download cache of registry artifacts (content-addressed, verified on every read)."""


@cache.command(name="list")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def cache_list(fmt):
    """List cached artifacts."""
    from .cache import BlobCache

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
            _size(e.size),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(e.mtime)),
        )
    out.print(table)
    out.print(f"{len(entries)} artifact(s), {_size(sum(e.size for e in entries))}.")


@cache.command(name="verify")
def cache_verify():
    """Re-hash every cached artifact; evict those whose bytes changed."""
    from .cache import BlobCache

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
    from .cache import BlobCache

    report = BlobCache().prune(older_than_days=older_than, everything=everything)
    out.print(f"Removed {len(report.removed)} file(s), freed {_size(report.freed_bytes)}.")


if __name__ == "__main__":
    main()
