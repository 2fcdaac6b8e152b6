"""Export skills as PEFT LoRA adapters, so a server applies them over G per request.

Why: a merged model bakes one skill set into the weights, but vLLM, PEFT and other
servers load many LoRA adapters over one base and pick one per request. Every 2-D
update of a linear projection, ΔW = Σ ω_k τ_k, is split by a truncated SVD into
B A (B = U_r √S_r, A = √S_r V_rᵀ) with scaling 1 (``lora_alpha`` = rank for every
module, through ``alpha_pattern`` where ranks differ), so servers that ignore
``rank_pattern``/``alpha_pattern`` (vLLM reads ranks from the tensors and alpha/r from
the config) still apply exactly B A.

What a LoRA cannot carry — embeddings, norms, biases — is refused by default with the
tensor named; ``others="save"`` stores those modules whole as PEFT ``modules_to_save``
(θ_G + ΔW, rounded once to G's dtype; biases of LoRA-targeted projections as
``lora_B.bias``), ``others="drop"`` leaves them out and reports how much of ΔW that loses.

The layout is the one PEFT's ``save_pretrained`` writes and vLLM's LoRA loader reads:
``adapter_config.json`` and ``adapter_model.safetensors`` with keys
``base_model.model.<module>.lora_A.weight`` / ``lora_B.weight``, ``target_modules`` the
full module names. Tensors are processed one at a time; the factors go to a spool file
and are copied behind the header at the end, so memory holds one ΔW and its SVD.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch

from .._build.adapter import CONFIG_NAME, KEY_PREFIX, WEIGHTS_NAME
from .._format.artifact import Artifact
from .._format.checkpoint import Checkpoint
from .._format.fsutil import disk_errors, fsync_dir
from .._format.safetensors_io import DTYPE_NAMES, build_header
from .._util.progress import NULL_PROGRESS, Progress
from ..errors import ExportError, IncompatibleBase, TensorMismatch

Others = Literal["refuse", "save", "drop"]
REPORT_NAME = "tvreg_export.json"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_COPY_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class ModuleExport:
    """How one tensor of ΔW went into the adapter.

    ``how``: ``lora`` (B A of ``rank``), ``lora_bias`` (``lora_B.bias``), ``saved``
    (whole, in ``modules_to_save``), ``dropped`` (left out), ``zero`` (ΔW = 0: nothing
    written). ``rel_error`` is ‖ΔW − ΔŴ‖/‖ΔW‖ of what a loader applies, measured from the
    factors as written (after rounding to the adapter's dtype).
    """

    name: str
    how: str
    shape: tuple[int, ...]
    rank: int | None
    norm: float
    rel_error: float


@dataclass(frozen=True)
class Probe:
    """G + adapter against the reference model on one batch of random tokens (fp32 logits)."""

    reference: str
    tokens: int
    max_abs_diff: float
    rel_error: float
    top1_agreement: float


@dataclass
class ExportResult:
    """One adapter directory and what it cost: per-module errors, sizes and the probe."""

    path: Path
    label: str
    base_model: str | None
    modules: list[ModuleExport]
    adapter_bytes: int
    artifact_bytes: int
    probe: Probe | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def rel_error(self) -> float:
        """‖ΔW − ΔŴ‖/‖ΔW‖ over every exported tensor together."""
        total = sum(m.norm**2 for m in self.modules)
        lost = sum((m.norm * m.rel_error) ** 2 for m in self.modules)
        return math.sqrt(lost / total) if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "label": self.label,
            "base_model": self.base_model,
            "adapter_bytes": self.adapter_bytes,
            "artifact_bytes": self.artifact_bytes,
            "rel_error": self.rel_error,
            "modules": [asdict(m) for m in self.modules],
            "probe": asdict(self.probe) if self.probe else None,
        }


@dataclass
class _Term:
    label: str
    weight: float
    artifact: Artifact


@dataclass
class _Set:
    """What one adapter holds: ω-weighted artifacts over G, and where to check it against."""

    label: str
    dirname: str
    terms: list[_Term]
    general: Checkpoint
    config_dir: Path
    base_model: str | None
    reference: Path | None  # an installed model equal to G + ΔW, for the probe

    @property
    def names(self) -> list[str]:
        return sorted({n for t in self.terms for n in t.artifact.manifest.tensors})

    @property
    def artifact_bytes(self) -> int:
        return sum(t.artifact.path.stat().st_size for t in self.terms)

    def delta(self, name: str) -> torch.Tensor:
        """ΔW = Σ fp32(ω_k)·τ̂_k in the listed order, padded to G's rows (G's added tokens get 0)."""
        acc: torch.Tensor | None = None
        for t in self.terms:
            if name in t.artifact.manifest.tensors:
                w = t.artifact.decode(name) * torch.tensor(t.weight, dtype=torch.float32)
                acc = w if acc is None else acc + w
        assert acc is not None
        shape = tuple(self.general.info(name).shape)
        if tuple(acc.shape) != shape:
            if acc.ndim == len(shape) and acc.shape[1:] == shape[1:] and acc.shape[0] < shape[0]:
                acc = torch.cat([acc, acc.new_zeros((shape[0] - acc.shape[0], *shape[1:]))])
            else:
                raise TensorMismatch(
                    f"the update of `{name}` has shape {tuple(acc.shape)}, but G's tensor is {shape}.",
                    tensor=name,
                    hints=["export onto the model the skill was built for"],
                )
        return acc

    def close(self) -> None:
        for t in self.terms:
            t.artifact.close()
        self.general.close()


# -- where the skills come from --------------------------------------------------------------


def _locked_artifacts(model_dir: Path) -> tuple[Any, list[tuple[Any, Path]]]:
    """The environment's lock and each locked skill's verified artifact (store, cache or registry).

    The one place export touches model-environment internals, so moving them moves one function.
    """
    from .._registry.fetch import fetch_locked
    from .environment import require_lock

    lock = require_lock(model_dir)
    return lock, [(s, fetch_locked(s)) for s in lock.skills]


def _general_id(model_dir: Path) -> str | None:
    """The Hub id a model directory's ``config.json`` records, for the adapter's ``base_model_name_or_path``."""
    from .environment import general_hub_id

    name, _revision = general_hub_id(model_dir)
    return name if name and "/" in name else None


def _environment_sets(model_dir: Path, *, per_skill: bool) -> list[_Set]:
    from .environment import open_pristine

    lock, located = _locked_artifacts(model_dir)
    if not located:
        raise ExportError(
            f"`{model_dir}` has no skills installed, so there is nothing to export.",
            hints=[f"install one first: `tvreg install SKILL --into {model_dir}`"],
        )
    if lock.method != "task_arithmetic" and not per_skill:
        raise ExportError(
            f"`{model_dir}` merges with `{lock.method}`, which is not a weighted sum of the task vectors, "
            "so no single adapter reproduces it.",
            hints=[
                "export one adapter per skill with `--per-skill`, or install with `--method task_arithmetic`"
            ],
        )
    base_model = _general_id(model_dir)
    terms = [_Term(s.label, float(s.weight), Artifact(path)) for s, path in located]
    if not per_skill:
        return [
            _Set(
                model_dir.name, "", terms, open_pristine(lock), model_dir, base_model,
                model_dir,
            )
        ]  # fmt: skip
    return [
        _Set(t.label, t.artifact.manifest.name, [t], open_pristine(lock), model_dir, base_model, None)
        for t in terms
    ]


def _skill_set(source: str, *, base: str | os.PathLike[str] | None, weight: float) -> _Set:
    """One artifact (a ``.tvskill`` file or ``ns/skill[@version]``) over ``base``: an environment or θ_pre."""
    from .._format.checkpoint import resolve_model_path
    from .._format.fingerprint import fingerprint
    from .lockfile import read_lock

    if base is None:
        raise ExportError(
            f"exporting `{source}` needs the model it will be served on, for its module types.",
            hints=["add `--base MODEL`: a model environment, or the skill's base model directory"],
        )
    base_dir = resolve_model_path(base)
    lock = read_lock(base_dir) if base_dir.is_dir() else None
    base_fp = lock.base_fingerprint if lock is not None else None
    if Path(source).is_file():
        path = Path(source)
    else:
        from .._registry.fetch import fetch_skill

        if base_fp is None:
            base_fp = fingerprint(base_dir)
        path = fetch_skill(source, base_fingerprint=base_fp)
    artifact = Artifact(path)
    if base_fp is None:
        base_fp = fingerprint(base_dir)
    if artifact.manifest.base_fingerprint != base_fp:
        artifact.close()
        raise IncompatibleBase(
            f"`{source}` was built for base {artifact.manifest.base_fingerprint[:12]}…, but `{base}` is "
            f"{base_fp[:12]}….",
            expected=base_fp,
            found=artifact.manifest.base_fingerprint,
            hints=["pass the skill's own base model (or an environment built on it) as `--base`"],
        )
    if lock is not None:
        from .environment import open_pristine

        general = open_pristine(lock)
    else:
        general = Checkpoint.open(base_dir)
    label = f"{source}" if Path(source).is_file() else source
    m = artifact.manifest
    return _Set(f"{label} (ω={weight:g})", m.name, [_Term(label, weight, artifact)], general, base_dir,
                _general_id(base_dir), None)  # fmt: skip


# -- which tensors a LoRA can carry ------------------------------------------------------------


@dataclass(frozen=True)
class _Modules:
    """Module types of the architecture, read from a meta-device instance of its config."""

    kinds: dict[str, str]  # module name -> "linear", "embedding" or the class name
    tied: dict[str, str]  # input-embedding module -> output module sharing its weight

    def of(self, tensor: str) -> tuple[str, str, str]:
        module, _, param = tensor.rpartition(".")
        return module, param, self.kinds.get(module, "unknown")


def _modules(config_dir: Path) -> _Modules:
    try:
        from transformers import AutoConfig, AutoModelForCausalLM
    except ImportError as exc:  # pragma: no cover - transformers is a test and export dependency
        raise ExportError(
            "exporting an adapter needs `transformers`, to tell linear projections from other modules.",
            hints=["pip install 'tvreg[export]'"],
        ) from exc
    config = AutoConfig.from_pretrained(str(config_dir))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    kinds = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            kinds[name] = "linear"
        elif isinstance(module, torch.nn.Embedding):
            kinds[name] = "embedding"
        else:
            kinds[name] = type(module).__name__
    tied: dict[str, str] = {}
    inp, outp = model.get_input_embeddings(), model.get_output_embeddings()
    if inp is not None and outp is not None and inp.weight is outp.weight:
        names = {id(m): n for n, m in model.named_modules()}
        tied[names[id(inp)]] = names[id(outp)]
    return _Modules(kinds, tied)


def _classify(names: Sequence[str], mods: _Modules, others: Others, label: str) -> dict[str, str]:
    """``lora``, ``lora_bias``, ``saved`` or ``dropped`` per tensor; refuse first, before reading data."""
    lora_modules = {mods.of(n)[0] for n in names if mods.of(n)[1:] == ("weight", "linear")}
    plan: dict[str, str] = {}
    refused: list[tuple[str, str]] = []
    for name in names:
        module, param, kind = mods.of(name)
        if param == "weight" and kind == "linear":
            plan[name] = "lora"
            continue
        what = "a bias" if param == "bias" else "an embedding" if kind == "embedding" else f"a {kind} {param}"
        if others == "refuse":
            refused.append((name, what))
        elif others == "drop":
            plan[name] = "dropped"
        elif param == "bias" and kind == "linear" and module in lora_modules:
            plan[name] = "lora_bias"
        else:
            plan[name] = "saved"
    if refused:
        first, what = refused[0]
        more = f" and {len(refused) - 1} more tensors" if len(refused) > 1 else ""
        raise ExportError(
            f"`{first}` ({what}){more} of `{label}` change, and a LoRA adapter carries only the "
            "weights of linear projections: embeddings, norms and biases cannot be factored into B A.",
            hints=[
                "store them whole as PEFT `modules_to_save` with `--others save` (PEFT loads those; "
                "vLLM accepts only embeddings and lm_head there)",
                "or leave them out with `--others drop`; the report then says how much of ΔW is lost",
            ],
        )
    return plan


# -- the factorisation --------------------------------------------------------------------------


def _rank(s: torch.Tensor, *, rank: int | None, energy: float | None) -> int:
    if rank is not None:
        return min(rank, int(s.numel()))
    assert energy is not None
    power = s.double() ** 2
    cum = torch.cumsum(power, 0)
    return int(torch.searchsorted(cum, energy * cum[-1]).item()) + 1 if cum[-1] > 0 else 0


def _factor(
    delta: torch.Tensor, *, rank: int | None, energy: float | None, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """B (out×r) and A (r×in) in ``dtype`` with B A ≈ ``delta``, and the relative error of the rounded pair."""
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    r = max(1, min(_rank(s, rank=rank, energy=energy), int(s.numel())))
    root = s[:r].sqrt()
    b = (u[:, :r] * root).to(dtype).contiguous()
    a = (root[:, None] * vh[:r]).to(dtype).contiguous()
    err = torch.linalg.norm(delta - b.float() @ a.float()) / torch.linalg.norm(delta)
    return b, a, float(err)


class _Spool:
    """Tensors appended to a scratch file; :meth:`finish` writes header + data to the adapter file."""

    def __init__(self, directory: Path) -> None:
        self.file = tempfile.TemporaryFile(dir=directory)
        self.entries: list[tuple[str, str, tuple[int, ...]]] = []

    def add(self, name: str, tensor: torch.Tensor) -> None:
        tensor = tensor.contiguous()
        self.entries.append((name, DTYPE_NAMES[tensor.dtype], tuple(tensor.shape)))
        if tensor.numel():
            self.file.write(memoryview(tensor.view(-1).view(torch.uint8).numpy()))  # type: ignore[arg-type]  # numpy's stubs make ndarray a buffer only on 3.12+

    def finish(self, path: Path, metadata: dict[str, str]) -> int:
        head, _ = build_header(self.entries, metadata)
        self.file.seek(0)
        with disk_errors(path), open(path, "wb") as f:
            f.write(head)
            shutil.copyfileobj(self.file, f, _COPY_CHUNK)
            f.flush()
            os.fsync(f.fileno())
        self.file.close()
        return path.stat().st_size


def _pattern(module: str) -> str:
    return re.escape(module)


def _write_adapter(
    s: _Set,
    out: Path,
    *,
    rank: int | None,
    energy: float | None,
    others: Others,
    dtype: str | None,
    progress: Progress,
) -> ExportResult:
    mods = _modules(s.config_dir)
    names = s.names
    plan = _classify(names, mods, others, s.label)
    out.mkdir(parents=True)
    spool = _Spool(out)
    reports: list[ModuleExport] = []
    ranks: dict[str, int] = {}
    saved: set[str] = set()
    progress.task(f"Factoring {s.label}", len(names))
    for name in names:
        module, param, _ = mods.of(name)
        info = s.general.info(name)
        want = _DTYPES[dtype] if dtype else info.torch_dtype
        delta = s.delta(name)
        norm = float(torch.linalg.norm(delta))
        how = plan[name]
        if norm == 0.0:
            reports.append(ModuleExport(name, "zero", tuple(delta.shape), None, 0.0, 0.0))
        elif how == "lora":
            b, a, err = _factor(delta, rank=rank, energy=energy, dtype=want)
            spool.add(f"{KEY_PREFIX}{module}.lora_A.weight", a)
            spool.add(f"{KEY_PREFIX}{module}.lora_B.weight", b)
            ranks[module] = a.shape[0]
            reports.append(ModuleExport(name, "lora", tuple(delta.shape), a.shape[0], norm, err))
        elif how == "lora_bias":
            bias = delta.to(want)
            spool.add(f"{KEY_PREFIX}{module}.lora_B.bias", bias)
            err = float(torch.linalg.norm(delta - bias.float()) / norm)
            reports.append(ModuleExport(name, "lora_bias", tuple(delta.shape), None, norm, err))
        elif how == "saved":
            for target in (module, *([mods.tied[module]] if module in mods.tied else [])):
                saved.add(target)
            reports.append(ModuleExport(name, "saved", tuple(delta.shape), None, norm, 0.0))
        else:
            reports.append(ModuleExport(name, "dropped", tuple(delta.shape), None, norm, 1.0))
        del delta
        progress.advance(1)
    progress.done()
    _save_whole_modules(s, spool, saved, mods, set(names), dtype)
    if not ranks and not saved and not any(r.how == "lora_bias" for r in reports):
        raise ExportError(
            f"`{s.label}` changes nothing a LoRA adapter can carry, so the adapter would be empty.",
            hints=["use `--others save` to store the changed modules whole"],
        )
    config = _adapter_config(s, ranks, saved, lora_bias=any(r.how == "lora_bias" for r in reports))
    adapter_bytes = spool.finish(out / WEIGHTS_NAME, {"format": "pt"})
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (out / "README.md").write_text(_card(s, config), encoding="utf-8")
    return ExportResult(out, s.label, s.base_model, reports, adapter_bytes, s.artifact_bytes, None, config)


def _save_whole_modules(
    s: _Set, spool: _Spool, saved: set[str], mods: _Modules, changed: set[str], dtype: str | None
) -> None:
    """Every parameter of each ``modules_to_save`` module: θ_G + ΔW, rounded once (as install does)."""
    inverse_tied = {v: k for k, v in mods.tied.items()}
    for module in sorted(saved):
        source = inverse_tied.get(module, module)  # a tied output module takes the embedding's values
        params = [n for n in s.general.names() if n.rpartition(".")[0] == source]
        for name in params:
            info = s.general.info(name)
            want = _DTYPES[dtype] if dtype else info.torch_dtype
            value = s.general.read_float32(name)
            if name in changed:
                value = value + s.delta(name)
            key = f"{KEY_PREFIX}{module}.{name.rpartition('.')[2]}"
            spool.add(key, value.to(want))


def _adapter_config(s: _Set, ranks: dict[str, int], saved: set[str], *, lora_bias: bool) -> dict[str, Any]:
    """PEFT's LoraConfig with scaling 1 for every module (``lora_alpha`` = rank)."""
    counts: dict[int, int] = {}
    for r in ranks.values():
        counts[r] = counts.get(r, 0) + 1
    r = max(counts, key=lambda k: (counts[k], k)) if counts else 1
    pattern = {_pattern(m): k for m, k in sorted(ranks.items()) if k != r}
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": s.base_model,
        "r": r,
        "lora_alpha": r,
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "target_modules": sorted(ranks) or None,
        "modules_to_save": sorted(saved) or None,
        "lora_dropout": 0.0,
        "bias": "none",
        "lora_bias": lora_bias,
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "revision": None,
    }


def _card(s: _Set, config: dict[str, Any]) -> str:
    meta = ["---"]
    if s.base_model:
        meta.append(f"base_model: {json.dumps(s.base_model)}")
    meta += ["library_name: peft", 'tags: ["tvreg", "task-vector", "lora"]', "---", ""]
    lines = [
        f"# {s.label} as a LoRA adapter",
        "",
        "Exported by `tvreg export` from these task vectors (ΔW = Σ ω_k τ_k):",
        "",
        *[f"- `{t.label}` at ω = {t.weight:g}" for t in s.terms],
        "",
        f"Rank {config['r']} (per-module ranks in `rank_pattern`), scaling 1 (`lora_alpha` = rank). "
        f"Per-module errors ‖ΔW − BA‖/‖ΔW‖ are in `{REPORT_NAME}`.",
    ]
    return "\n".join(meta + lines) + "\n"


# -- the probe ------------------------------------------------------------------------------------


def _load_fp32(cls: Any, path: Path) -> Any:
    try:
        return cls.from_pretrained(str(path), dtype=torch.float32)
    except TypeError:  # transformers < 4.56 spells it torch_dtype
        return cls.from_pretrained(str(path), torch_dtype=torch.float32)


@contextlib.contextmanager
def _general_view(s: _Set) -> Iterator[Path]:
    """A model directory of pristine G: its weight files linked beside the environment's config."""
    with tempfile.TemporaryDirectory(prefix=".tvreg-probe-") as tmp:
        view = Path(tmp)
        for item in s.config_dir.iterdir():
            if (
                item.suffix == ".json"
                and not item.name.endswith(".index.json")
                and item.name != "tvreg.tensors.json"
            ):
                os.symlink(item.resolve(), view / item.name)
        for item in s.general.directory.iterdir():
            if item.suffix == ".safetensors" or item.name.endswith(".index.json"):
                target = view / item.name
                if target.exists() or target.is_symlink():
                    target.unlink()
                os.symlink(item.resolve(), target)
        yield view


def probe(s: _Set, adapter: Path, *, batch: int = 4, length: int = 32, seed: int = 0) -> Probe:
    """Logits of G + adapter (``PeftModel.from_pretrained``) against the model the skills make.

    The reference is the installed model when exporting an environment's whole set in float32,
    else G + ΔW computed here in fp32.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with _general_view(s) as view:
        model = PeftModel.from_pretrained(_load_fp32(AutoModelForCausalLM, view), str(adapter)).eval()
        if s.reference is not None:
            reference = _load_fp32(AutoModelForCausalLM, s.reference).eval()
            what = f"installed model `{s.reference}`"
        else:
            reference = _load_fp32(AutoModelForCausalLM, view).eval()
            state = reference.state_dict()
            with torch.no_grad():
                for name in s.names:
                    if name in state:
                        state[name].add_(s.delta(name))
            what = "G + ΔW in float32"
    vocab = int(cast(Any, model.get_base_model()).config.vocab_size)  # peft types the model as a bare nn.Module
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        got = model(input_ids=ids).logits.float()
        want = reference(input_ids=ids).logits.float()
    diff = (got - want).abs()
    return Probe(
        reference=what,
        tokens=batch * length,
        max_abs_diff=float(diff.max()),
        rel_error=float(torch.linalg.norm(got - want) / torch.linalg.norm(want)),
        top1_agreement=float((got.argmax(-1) == want.argmax(-1)).float().mean()),
    )


# -- the entry point ------------------------------------------------------------------------------


def export_peft(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    rank: int | None = None,
    energy: float | None = None,
    per_skill: bool = False,
    weight: float = 1.0,
    base: str | os.PathLike[str] | None = None,
    others: Others = "refuse",
    dtype: str | None = None,
    check: bool = True,
    progress: Progress = NULL_PROGRESS,
) -> list[ExportResult]:
    """Write the skills of ``source`` as PEFT LoRA adapter directories under ``output``.

    Args:
        source: a model environment (its installed set, Σ ω_k τ_k from its lock), a
            ``.tvskill`` file or a registry skill ``ns/skill[@version]`` (at ``weight``,
            over ``base``).
        output: the adapter directory (with ``per_skill``, one subdirectory per skill);
            must not exist. Written beside it and renamed into place when complete.
        rank: the same rank for every module; or ``energy``: per module the smallest rank
            keeping that fraction of ‖ΔW‖² (default 0.99 when neither is given).
        per_skill: one adapter per installed skill, each at its locked ω.
        others: what to do with tensors a LoRA cannot carry (see the module docstring).
        dtype: the adapter's dtype (``float32``, ``bfloat16``, ``float16``); default G's.
        check: also run the probe (needs ``transformers`` and ``peft``).

    Returns:
        One :class:`ExportResult` per adapter written.

    Raises:
        ExportError: a tensor a LoRA cannot carry (``others="refuse"``), a merge method
            that is no weighted sum, bad options, an existing output.
        IncompatibleBase: the skill was built for another base than ``base``.
    """
    if (rank is None) == (energy is None):
        if rank is not None:
            raise ExportError("`rank` and `energy` both choose the rank; give one of them.")
        energy = 0.99
    if rank is not None and rank < 1:
        raise ExportError(f"`rank` must be at least 1, not {rank}.")
    if energy is not None and not 0.0 < energy <= 1.0:
        raise ExportError(f"`energy` must be in (0, 1], not {energy}.")
    if dtype is not None and dtype not in _DTYPES:
        raise ExportError(f"`dtype` must be one of {', '.join(_DTYPES)}, not `{dtype}`.")
    if others not in ("refuse", "save", "drop"):
        raise ExportError(f"`others` must be refuse, save or drop, not `{others}`.")
    output = Path(output)
    if output.exists():
        raise ExportError(
            f"`{output}` already exists; tvreg writes an adapter only into a new directory.",
            hints=["remove it, or choose another `-o` directory"],
        )
    src = Path(source)
    if src.is_dir() and (src / "tvreg.lock").is_file():
        sets = _environment_sets(src, per_skill=per_skill)
    else:
        if per_skill:
            raise ExportError(
                f"`--per-skill` splits a model environment's skills, and `{source}` is one skill.",
                hints=["drop `--per-skill`"],
            )
        sets = [_skill_set(str(source), base=base, weight=weight)]
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.tvreg-export-", dir=output.parent))
    results: list[ExportResult] = []
    try:
        for s in sets:
            where = staging / s.dirname if per_skill else staging / "adapter"
            result = _write_adapter(
                s, where, rank=rank, energy=energy, others=others, dtype=dtype, progress=progress
            )
            if check:
                result.probe = probe(s, where)
            results.append(result)
        final_dirs = []
        for s, result in zip(sets, results, strict=True):
            final = output / s.dirname if per_skill else output
            result.path = final
            final_dirs.append(final)
            where = staging / s.dirname if per_skill else staging / "adapter"
            (where / REPORT_NAME).write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
            for f in where.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            fsync_dir(where)
        os.rename(staging if per_skill else staging / "adapter", output)
        fsync_dir(output.parent)
    finally:
        for s in sets:
            s.close()
        shutil.rmtree(staging, ignore_errors=True)
    return results
