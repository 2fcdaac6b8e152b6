"""Turn a PEFT LoRA adapter directory into task vectors keyed by the base model's tensor names.

A LoRA fine-tune never stores θ_ft: it stores low-rank factors, so τ = scaling · (B @ A) has to be
rebuilt exactly the way PEFT's ``merge_and_unload`` would apply it (same scaling rules, same
transposes), or a merged skill silently drifts from what the user trained. Tensors are read lazily
with ``safe_open`` and yielded one at a time, so peak memory is a single weight matrix.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from safetensors import safe_open

from tvreg.errors import CheckpointError, CorruptCheckpoint, TensorMismatch, UnsafeCheckpoint

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAMES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.ckpt")
KEY_PREFIX = "base_model.model."  # what PEFT puts before every base module name it saves
# peft 0.21 writes keys without the adapter name: <module>.lora_A.weight, <module>.lora_embedding_A, ...
_LORA_KEY = re.compile(r"^(?P<mod>.+)\.(?P<part>lora_[AB]\.weight|lora_B\.bias|lora_embedding_[AB])$")
# Options whose update is not a plain, static scaling · B @ A on top of the original base weights.
_VARIANTS = (
    "alora_invocation_tokens",
    "use_qalora",
    "use_bdlora",
    "arrow_config",
    "kasa_config",
    "velora_config",
    "monteclora_config",
    "target_parameters",
    "trainable_token_indices",
    "layer_replication",
)
# Initialisations that rewrite the base weights themselves, so B @ A is relative to a modified base.
_BASE_REWRITING_INITS = ("pissa", "corda", "olora", "loftq", "lora_ga")


class AdapterDelta(NamedTuple):
    """One yielded tensor. ``kind`` is "delta" (τ itself) or "replace" (the adapter stores the whole
    tensor; the caller computes τ = tensor − base, because this module never sees base values)."""

    name: str
    tensor: torch.Tensor
    kind: Literal["delta", "replace"]


def _pattern_value(pattern: Mapping[str, float], key: str, default: float) -> float:
    """First pattern matching ``key`` as a dotted suffix wins, exactly like peft's get_pattern_key."""
    for pat, value in pattern.items():
        if re.match(rf"(.*\.)?({pat})$", key):
            return value
    return default


@dataclass(frozen=True)
class AdapterInfo:
    """What tvreg needs from adapter_config.json; patterns let PEFT vary r and alpha per module."""

    path: Path
    r: int
    lora_alpha: float
    use_rslora: bool
    base_model_name_or_path: str | None
    target_modules: list[str] | str | None
    fan_in_fan_out: bool = False
    rank_pattern: Mapping[str, int] = field(default_factory=dict)
    alpha_pattern: Mapping[str, float] = field(default_factory=dict)

    def rank(self, module_key: str) -> int:
        """Rank PEFT gives the module named ``module_key`` in the base model (no ``.weight``)."""
        return int(_pattern_value(self.rank_pattern, module_key, self.r))

    def scaling(self, module_key: str) -> float:
        """alpha/r, or alpha/sqrt(r) with rsLoRA, for the base module ``model.layers.0.self_attn.q_proj``."""
        r = self.rank(module_key)
        alpha = float(_pattern_value(self.alpha_pattern, module_key, self.lora_alpha))
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def read_adapter(adapter_dir: Path, *, weights_here: bool = True) -> AdapterInfo:
    """Read and vet an adapter directory, refusing anything whose update is not a linear delta.

    ``weights_here=False`` reads the config alone: ``install --dry-run hf://…`` has
    adapter_config.json locally but only the remote header of the weights.
    """
    adapter_dir = Path(adapter_dir)
    cfg_path, weights = adapter_dir / CONFIG_NAME, adapter_dir / WEIGHTS_NAME
    if not cfg_path.is_file():
        raise CheckpointError(
            f"{adapter_dir} has no {CONFIG_NAME}, so it is not a PEFT adapter directory.",
            hints=["save the adapter with PeftModel.save_pretrained(dir)"],
        )
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{cfg_path} is not readable JSON: {exc}.") from exc
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path} is not a JSON object.")
    if weights_here and not weights.is_file():
        pickles = [n for n in PICKLE_NAMES if (adapter_dir / n).exists()]
        if pickles:
            raise UnsafeCheckpoint(
                f"{adapter_dir / pickles[0]} is a pickle, and tvreg never unpickles weights.",
                hints=["re-save the adapter with save_pretrained(dir, safe_serialization=True)"],
            )
        raise CheckpointError(
            f"{adapter_dir} has no {WEIGHTS_NAME}.",
            hints=["save the adapter with PeftModel.save_pretrained(dir)"],
        )
    if cfg.get("peft_type") != "LORA":
        raise CheckpointError(
            f"{cfg_path} declares peft_type {cfg.get('peft_type')!r}; only LORA adapters are supported.",
            hints=["merge it with PEFT and import the merged model instead"],
        )
    if cfg.get("use_dora"):
        raise CheckpointError(
            f"{cfg_path} is a DoRA adapter, whose update rescales by the base weight's norm "
            "and is not a linear delta.",
            hints=["merge it with PeftModel.merge_and_unload() and import the merged model"],
        )
    for opt in _VARIANTS:
        if cfg.get(opt):
            raise CheckpointError(
                f"{cfg_path} sets {opt}, so its update is not a plain B @ A delta.",
                hints=["merge it with PeftModel.merge_and_unload() and import the merged model"],
            )
    init = cfg.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_REWRITING_INITS):
        raise CheckpointError(
            f"{cfg_path} uses init_lora_weights={init!r}, which rewrites the base weights.",
            hints=["re-save with save_pretrained(..., path_initial_model_for_weight_conversion=...)"],
        )
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0 or not isinstance(alpha, (int, float)):
        raise CheckpointError(f"{cfg_path} has an invalid r={r!r} or lora_alpha={alpha!r}.")
    return AdapterInfo(
        path=adapter_dir,
        r=r,
        lora_alpha=float(alpha),
        use_rslora=bool(cfg.get("use_rslora")),
        base_model_name_or_path=cfg.get("base_model_name_or_path"),
        target_modules=cfg.get("target_modules"),
        fan_in_fan_out=bool(cfg.get("fan_in_fan_out")),
        rank_pattern=dict(cfg.get("rank_pattern") or {}),
        alpha_pattern=dict(cfg.get("alpha_pattern") or {}),
    )


def _plan(keys: list[str], where: Path) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Group file keys into LoRA modules ({module: {part: key}}) and whole tensors ({base name: key})."""
    modules: dict[str, dict[str, str]] = {}
    whole: dict[str, str] = {}
    for key in keys:
        if not key.startswith(KEY_PREFIX):
            raise CorruptCheckpoint(
                f"{where}: tensor {key!r} does not start with {KEY_PREFIX!r}.",
                hints=["only adapters written by PEFT's save_pretrained are supported"],
            )
        rel = key[len(KEY_PREFIX) :]
        if m := _LORA_KEY.match(rel):
            modules.setdefault(m["mod"], {})[m["part"]] = key
        elif ".lora_" in rel or rel.startswith("lora_"):
            raise CheckpointError(
                f"{where}: tensor {key!r} is a LoRA part tvreg does not understand.",
                hints=["merge it with PeftModel.merge_and_unload() and import the merged model"],
            )
        else:  # modules_to_save, bias="all"/"lora_only", saved embeddings: base_layer.* is the wrapped weight
            whole[rel.replace(".base_layer.", ".")] = key
    return modules, whole


class _Item(NamedTuple):
    """How one base tensor's update is made: from the LoRA factors of ``module`` (``part`` is "linear",
    "emb" or "bias"), from a whole tensor the adapter stores (``whole_key``), or from both."""

    module: str
    part: str | None
    whole_key: str | None


def header_shapes(header: Mapping[str, Any], where: Path) -> dict[str, tuple[int, ...]]:
    """Tensor key → shape from a parsed safetensors header (the JSON object), the ``__metadata__`` left out.

    Raises:
        CorruptCheckpoint: an entry carries no list of non-negative integers as its shape.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
        ):
            raise CorruptCheckpoint(f"{where} is not a valid safetensors file: `{key}` has no valid shape.")
        shapes[key] = tuple(shape)
    return shapes


def _fits(name: str, shape: tuple[int, ...], base_shapes: Mapping[str, tuple[int, ...]], where: Path, src: str) -> None:
    """Refuse an update the base cannot take: a tensor it does not have, or one of another shape."""
    if name not in base_shapes:
        raise TensorMismatch(
            f"{where} changes `{name}`, which the base model does not have.",
            tensor=name,
            hints=["check that the adapter was trained on this base model"],
        )
    if tuple(shape) != tuple(base_shapes[name]):
        raise TensorMismatch(
            f"{where} gives `{name}` shape {list(shape)} {src}, but the base has {list(base_shapes[name])}.",
            tensor=name,
            hints=["check that the adapter was trained on this base model"],
        )


def check_shapes(
    info: AdapterInfo,
    shapes: Mapping[str, tuple[int, ...]],
    base_shapes: Mapping[str, tuple[int, ...]],
    *,
    where: Path,
) -> dict[str, _Item]:
    """Vet every update an adapter would make from shapes alone, and plan them, sorted by base tensor name.

    Why shapes alone: the real conversion and ``install --dry-run hf://…`` (which has only the
    weights' header, read by HTTP ``Range``) must refuse the same adapters with the same words,
    and the conversion must refuse before it multiplies a single B @ A. For each LoRA module:
    both factors present, A is (r, in) and B is (out, r) with r the config's rank for that module
    (``r`` or ``rank_pattern``), and (out, in) — transposed for embeddings and ``fan_in_fan_out`` —
    is the base weight's shape; a ``lora_B.bias`` is (out,) like the base bias; every whole tensor
    the adapter stores exists in the base with the same shape.

    Args:
        info: the adapter's config (:func:`read_adapter`).
        shapes: the adapter file's tensor key → shape (:func:`header_shapes`, or ``safe_open``).
        base_shapes: θ_pre's tensor name → shape.
        where: the weights file, as errors name it.

    Raises:
        CorruptCheckpoint: a factor without its partner, not 2-D, or of another rank than the config's.
        TensorMismatch: an update for a tensor the base lacks, or of another shape than the base's.
        CheckpointError: a LoRA part tvreg does not understand.
    """
    modules, whole = _plan(list(shapes), where)
    items: dict[str, _Item] = {}
    for mod in sorted(modules):
        parts = modules[mod]
        emb = "lora_embedding_A" in parts or "lora_embedding_B" in parts
        a, b = ("lora_embedding_A", "lora_embedding_B") if emb else ("lora_A.weight", "lora_B.weight")
        if a not in parts or b not in parts:
            have = a if a in parts else b if b in parts else sorted(parts)[0]
            miss = b if a in parts else a
            raise CorruptCheckpoint(
                f"{where} has `{KEY_PREFIX}{mod}.{have}` without its `{KEY_PREFIX}{mod}.{miss}`.",
                hints=["re-save the adapter with PeftModel.save_pretrained(dir); this file is incomplete"],
            )
        a_key, b_key = parts[a], parts[b]
        a_shape, b_shape = tuple(shapes[a_key]), tuple(shapes[b_key])
        for key, shape in ((a_key, a_shape), (b_key, b_shape)):
            if len(shape) != 2:
                raise CorruptCheckpoint(
                    f"{where} has `{key}` of shape {list(shape)}, not a 2-D LoRA factor.",
                    hints=["only Linear and Embedding LoRA layers are supported"],
                )
        r = info.rank(mod)
        for key, got in ((a_key, a_shape[0]), (b_key, b_shape[1])):
            if got != r:
                raise CorruptCheckpoint(
                    f"{where} has `{key}` of rank {got}, but adapter_config.json gives `{mod}` rank {r}.",
                    hints=["the config and the weights come from different saves; re-save the adapter"],
                )
        out_in = (b_shape[0], a_shape[1])
        src = f"(from `{a_key}` {list(a_shape)} and `{b_key}` {list(b_shape)})"
        _fits(f"{mod}.weight", out_in[::-1] if emb or info.fan_in_fan_out else out_in, base_shapes, where, src)
        items[f"{mod}.weight"] = _Item(mod, "emb" if emb else "linear", whole.get(f"{mod}.weight"))
        if "lora_B.bias" in parts:
            key = parts["lora_B.bias"]
            bias = tuple(shapes[key])
            if bias != (b_shape[0],):
                raise CorruptCheckpoint(
                    f"{where} has `{key}` of shape {list(bias)}, but its `{b_key}` has {b_shape[0]} rows.",
                    hints=["re-save the adapter; the file is inconsistent"],
                )
            _fits(f"{mod}.bias", bias, base_shapes, where, f"(from `{key}`)")
            items[f"{mod}.bias"] = _Item(mod, "bias", whole.get(f"{mod}.bias"))
    for name, key in sorted(whole.items()):
        _fits(name, tuple(shapes[key]), base_shapes, where, f"(`{key}`)")
        items.setdefault(name, _Item("", None, key))
    return dict(sorted(items.items()))


def _finite(name: str, t: torch.Tensor, where: Path) -> torch.Tensor:
    if not torch.isfinite(t).all():
        raise CheckpointError(
            f"{where}: the update for `{name}` contains NaN or Inf values.",
            hints=["the fine-tune diverged; use an earlier checkpoint"],
        )
    return t


def adapter_deltas(adapter_dir: Path, base_shapes: Mapping[str, tuple[int, ...]]) -> Iterator[AdapterDelta]:
    """Yield one AdapterDelta per base tensor the adapter changes, in fp32, sorted by name.

    LoRA'd modules give kind "delta" (τ = scaling · B @ A, plus scaling · lora_B.bias for ``lora_bias``).
    Whole tensors stored by the adapter (modules_to_save, trainable biases, a saved embedding base layer)
    give kind "replace": τ = tensor − base. When a stored whole tensor also carries a LoRA delta, one
    "replace" item holds their sum, so every name is yielded exactly once. Every shape is checked
    (:func:`check_shapes`) before the first tensor is read.
    """
    info = read_adapter(adapter_dir)
    where = info.path / WEIGHTS_NAME
    try:
        handle = safe_open(str(where), framework="pt")
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise CorruptCheckpoint(f"{where} is not a valid safetensors file: {exc}.") from exc
    with handle as f:
        shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
        items = check_shapes(info, shapes, base_shapes, where=where)
        for name, (mod, part, whole_key) in items.items():
            delta = None
            if part is not None:
                delta = _finite(name, _lora_delta(f, info, mod, part, where), where)
            if whole_key is None and delta is not None:
                yield AdapterDelta(name, delta, "delta")
            elif whole_key is not None:
                full = _finite(name, f.get_tensor(whole_key).to(torch.float32), where)
                yield AdapterDelta(name, full if delta is None else full + delta, "replace")


def _lora_delta(f: Any, info: AdapterInfo, mod: str, part: str, where: Path) -> torch.Tensor:
    """PEFT's get_delta_weight in fp32: Linear B @ A (transposed for fan_in_fan_out), Embedding (B @ A).T."""

    def get(suffix: str) -> torch.Tensor:
        return f.get_tensor(f"{KEY_PREFIX}{mod}.{suffix}").to(torch.float32)

    scaling = info.scaling(mod)
    if part == "bias":
        return get("lora_B.bias") * scaling
    a_key, b_key = (
        ("lora_embedding_A", "lora_embedding_B") if part == "emb" else ("lora_A.weight", "lora_B.weight")
    )
    a, b = get(a_key), get(b_key)
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise CheckpointError(
            f"{where}: the LoRA factors of {mod!r} contain NaN or Inf values.",
            hints=["the fine-tune diverged; use an earlier checkpoint"],
        )
    delta = (b @ a) * scaling
    return delta.T.contiguous() if part == "emb" or info.fan_in_fan_out else delta
