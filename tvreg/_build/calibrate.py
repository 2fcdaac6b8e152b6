"""Calibrated ``auto``: choose the smallest coding of τ that keeps a target share of what the fine-tune gained.

Why not the per-tensor relative error ``auto`` uses without data: ‖τ̂ − τ‖/‖τ‖ is a
weight-space proxy, and the settings that keep a skill on real pairs have per-tensor
errors of 0.3–3 (issue 23). What a user cares about is the model's behaviour, so this
measures it: the loss of θ_pre, of θ_pre + τ and of θ_pre + τ̂ on held-out data, and the
**gain retention** (loss_pre − loss_τ̂) / (loss_pre − loss_τ). The formula is the same
for a score where higher is better (both differences flip sign), so a hook may return
either a loss or an accuracy.

Search: every candidate coding (one setting for every matrix; vectors and scalars stay
``exact``, as in uncalibrated ``auto``) is encoded once to learn its size. Retention grows
with size along a *family* (settings that differ in one knob: density, energy, rank; bf16
and int8 are one family) but not across families — a smaller random-sparse coding can keep
more than a larger low-rank one — so each family is bisected on its own, smallest families
first, and only settings smaller than the best passing one so far are measured. Cost: 2
evaluations (θ_pre and θ_pre + τ) plus at most Σ ⌈log₂(n_f + 1)⌉ over families of n_f
settings; the winner is always one that was measured. A target of 1.0 means "keep τ bit
for bit" (a lossy coding can measure above 100% by noise): ``exact`` is chosen after the 2
reference evaluations.

Then per group (a decoder layer's matrices, read off the tensor names; no per-architecture
table): each group is probed once with only it at the next smaller setting, groups are
ordered by retention lost per byte saved, and the longest passing prefix is bisected, as
mixed-precision quantizers allocate bits by a sensitivity measured once. The moved groups then
step further down the smaller setting's family, one setting at a time: the longest prefix of
the same order that still passes at the next setting is bisected, with no new probes (the
order measured once ranks every level). Cost: G + L·⌈log₂(G + 1)⌉ for G groups and L levels
(2 when the family has a smaller setting: room for one further step is kept, more steps take
what is left); ``max_evaluations`` caps the whole search (adjacent layers are merged to fit),
so a build costs at most 2 + Σ ⌈log₂(n_f + 1)⌉ + G + L·⌈log₂(G + 1)⌉ evaluations.

Margin: a mean over N texts is itself an estimate. On real pairs a candidate that kept
99.0% on the calibration texts kept 97.0% on disjoint held-out texts, so with per-text
losses (a text file) a candidate passes only when the 5th percentile of a paired bootstrap
of retention also meets the target: 1000 resamples of the text indices (seed 0), the same
indices for θ_pre, θ_pre + τ and θ_pre + τ̂, each resample's retention
Σ(nll_pre − nll_τ̂) / Σ(nll_pre − nll_τ) over its texts (per-text NLL summed over tokens,
so the token weighting of the mean is kept). A hook returns one number, which cannot be
resampled: it is judged on the mean, and the manifest says so.

Data: a UTF-8 text file of held-out texts, one per line (blank lines ignored), or a
``.jsonl`` file of ``{"text": ...}`` records (texts keep their newlines), scored with
the model's own tokenizer (mean token NLL, each text on its own, ``add_special_tokens``);
or an evaluation hook ``module:fn`` / ``file.py:fn`` (:mod:`tvreg._env.evaluate`), called on a
scratch model directory per evaluation, whose single metric (or ``loss``) is used.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from typing import Any
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .._format.codecs import Codec, Encoded, get_codec, make_codec
from .._format.codecs.lowrank import reuse_svd
from ..errors import EvaluationError
from . import DEFAULT_MAX_EVALUATIONS

MAX_TEXTS = 100_000

RESAMPLES = 1000
QUANTILE = 0.05
SEED = 0
MARGIN = {"method": "paired bootstrap", "resamples": RESAMPLES, "quantile": QUANTILE, "seed": SEED}
"""How a candidate's retention bound is computed; the manifest records it beside the bound."""


@dataclass(frozen=True)
class Calibration:
    """The figures a calibrated build records in the manifest's ``calibration`` object."""

    retention: float
    target: float
    chosen: str
    data: str
    data_sha256: str
    texts: int | None
    tokens: int | None
    loss_pre: float
    loss_finetuned: float
    loss_chosen: float
    evaluations: int
    metric: str = "loss"
    retention_bound: float | None = None
    margin: dict | None = None
    margin_reason: str | None = None
    max_evaluations: int | None = None
    plan: dict | None = None
    plan_reason: str | None = None
    explored: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class _Uniform(Codec):
    """One inner codec for every matrix; vectors and scalars stay exact (norms, biases: cheap, and merges feel them)."""

    name = "auto"
    lossless = False

    def __init__(self, inner: Codec, given: Mapping[str, object] | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.given = dict(given or {})

    def describe(self) -> str:
        """The setting as it was asked for, defaults included when named (``sparse(density=0.1)``, not ``sparse``)."""
        if not self.given:
            return self.inner.describe()
        return f"{self.inner.name}({', '.join(f'{k}={v}' for k, v in self.given.items())})"

    def encode(self, tensor: torch.Tensor) -> Encoded:
        if tensor.dim() < 2 or self.inner.name == "exact":
            enc = get_codec("exact").encode(tensor)
            return Encoded(enc.data, enc.params, codec="exact", rel_error=0.0)
        enc = self.inner.encode(tensor)
        return Encoded(enc.data, enc.params, codec=enc.codec or self.inner.name, rel_error=enc.rel_error)

    def decode(self, data, shape, params, *, where):  # pragma: no cover - the manifest names the inner codec
        raise NotImplementedError


class _Planned(Codec):
    """Codes each tensor exactly as the calibration measured it: its cached coding by name, else ``fallback``."""

    name = "auto"
    lossless = False

    def __init__(self, fallback: Codec, codings: Mapping[str, Encoded] | None, label: str) -> None:
        super().__init__()
        self.fallback, self.codings, self.label = fallback, dict(codings or {}), label

    def describe(self) -> str:
        return self.label

    def encode(self, tensor: torch.Tensor) -> Encoded:
        return self.fallback.encode(tensor)

    def encode_named(self, name: str, tensor: torch.Tensor) -> Encoded:
        coded = self.codings.get(name)
        return coded if coded is not None else self.fallback.encode(tensor)

    def decode(self, data, shape, params, *, where):  # pragma: no cover - the manifest names the inner codec
        raise NotImplementedError


@dataclass
class _Setting:
    """One candidate coding for every matrix, and the bytes it takes per tensor."""

    coder: _Uniform
    sizes: dict[str, int]
    family: tuple = ()

    @property
    def size(self) -> int:
        return sum(self.sizes.values())


KNOBS = ("density", "energy", "rank")
"""The option that moves a setting along its family's size/retention curve."""


def family(codec: str, opts: Mapping[str, object]) -> tuple:
    """Settings that differ only in the value of one knob (:data:`KNOBS`): along a family retention grows with size.

    ``bf16`` and ``int8`` are one family (dense quantisers: fewer bits, more error).
    ``lowrank`` at fixed ranks is one family per ``values`` kind (bf16, int8, mixed factors):
    ``values`` is not a knob, so it stays in the family's key.
    ``int4`` and ``sign`` are each a family of their own: their sizes need not sit below
    int8's — on a τ that is 95% zeros, int4's packed codes (67.7 KB for 576 × 1536) are
    larger than int8's zero-bitmapped ones (61.6 KB) at 10x the error — and a family
    whose larger settings keep less would mislead the bisection. Across families there is no such order (a smaller random-sparse coding can keep more
    than a larger low-rank one), so the search bisects each family on its own.
    """
    if codec in ("bf16", "int8") and not opts:
        return ("dense",)
    knob = tuple(k for k in KNOBS if k in opts)
    return (codec, *knob, *sorted((k, repr(v)) for k, v in opts.items() if k not in KNOBS))


def _encode_all(coder: Codec, taus: Mapping[str, torch.Tensor]) -> dict[str, Encoded]:
    return {n: coder.encode(t) for n, t in taus.items()}


def _decode(taus: Mapping[str, torch.Tensor], codings: Mapping[str, Encoded]) -> dict[str, torch.Tensor]:
    return {
        n: get_codec(codings[n].codec or "exact").decode(codings[n].data, tuple(t.shape), codings[n].params, where=n)
        for n, t in taus.items()
    }


def _group_key(name: str) -> str:
    """The decoder layer a tensor belongs to, read off its name: the prefix up to its first numeric part.

    ``model.layers.3.mlp.down_proj.weight`` → ``model.layers.3`` (experts of a mixture stay in
    their layer); a tensor outside any numbered block is its own group (``lm_head.weight`` →
    ``lm_head``). No per-architecture table: the checkpoint's own names decide.
    """
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return name.rpartition(".")[0] or name


def _natural(key: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in key.split("."))


def _groups(taus: Mapping[str, torch.Tensor], most: int) -> list[tuple[str, list[str]]]:
    """The matrices of τ by layer, in layer order; adjacent layers merged into at most ``most`` groups."""
    by_key: dict[str, list[str]] = {}
    for n, t in taus.items():
        if t.dim() >= 2:
            by_key.setdefault(_group_key(n), []).append(n)
    keys = sorted(by_key, key=_natural)
    if len(keys) <= most:
        return [(k, by_key[k]) for k in keys]
    merged = []
    for i in range(most):
        part = keys[i * len(keys) // most : (i + 1) * len(keys) // most]
        label = part[0] if len(part) == 1 else f"{part[0]} … {part[-1]}"
        merged.append((label, [n for k in part for n in by_key[k]]))
    return merged


def _plan_cost(groups: int, levels: int = 1) -> int:
    """Evaluations of the per-group search over ``groups`` groups: one probe each, then a bisection per level."""
    return groups + levels * math.ceil(math.log2(groups + 1))


def _setting(codec: str, **opts: object) -> tuple[str, dict[str, object]]:
    return codec, opts


CANDIDATES: list[tuple[str, dict[str, object]]] = [
    _setting("bf16"),
    _setting("int8"),
    *[_setting("sparse", density=d, select="random") for d in (0.5, 0.3, 0.2, 0.1, 0.05, 0.02)],
    *[_setting("sparse", density=d, select="random", values="int8") for d in (0.1, 0.05, 0.03, 0.02, 0.01)],
    *[_setting("sparse", density=d) for d in (0.3, 0.1, 0.03)],
    *[_setting("sparse", density=d, values="int8") for d in (0.1, 0.05, 0.03, 0.01)],
    *[_setting("lowrank", energy=e, fallback="int8") for e in (0.99, 0.9, 0.75, 0.5)],
    *[_setting("lowrank", rank=r, fallback="int8") for r in (64, 32, 16, 8)],
    *[_setting("lowrank", rank=r, fallback="int8", values="int8") for r in (64, 32, 16, 8)],
    *[_setting("lowrank", rank=r, fallback="int8", values="mixed") for r in (64, 32, 16, 8)],
    _setting("int4"),
    _setting("sign"),
    *[
        _setting("sparse", density=d, select="random", values="int4", rescale="row")
        for d in (0.3, 0.2, 0.15, 0.1, 0.05, 0.03)
    ],
    *[_setting("sparse", density=d, select="random", values="sign") for d in (0.5, 0.3, 0.2, 0.1)],
]
"""The lossy settings tried, one for every matrix of τ (sorted by measured size before the search).

48 settings in 13 families (at most 33 evaluations for the uniform pick). The low-bit ones
(issue 23) reach ≥ 32x vs the bf16 τ with hashed positions: random sparse with int4 values
in groups of 64 kept values (0.1·4.25 bits an entry: 38x at density 0.1) and with sign
values (0.3·1.25 bits: 43x at 0.3). The int4 family scales each row's kept values to carry
the row's squared norm (``rescale=row``): on the low-learning-rate SmolLM2 pair it kept
0.998 of the gain at density 0.2 where DARE's 1/density kept 0.979, so that family's
six densities (six settings cost the same 3 bisection steps as four) replace DARE's.
Dense ``int4`` (≈ 4x) and ``sign`` (≈ 16x) are families of one setting each (see
:func:`family`). Low-rank factors in int8, or mixed (the top ⌈r/4⌉ components int8, the
rest int4), at fixed ranks: a merged rank-16 LoRA
keeps ≥ 99% with bf16 factors at only 35x, and these make the same rank about 1.6x and
2.6x smaller (rank 16 of a 576 × 1536 matrix). Each ``values`` kind is its own family
(sizes along rank rise with retention only at one precision). Why no energy forms of
them: each family of 4 costs up to 3 evaluations and an SVD of every matrix per setting,
and two more would make the worst case 2 + 39 evaluations, most of the default budget of 48,
which the per-group search and its further steps need.
"""


def read_texts(path: Path) -> list[str]:
    """The held-out texts of a calibration file.

    A ``.jsonl`` file holds one JSON object per line with a ``text`` string (the layout of
    Hugging Face datasets' JSON Lines exports), so texts keep their newlines — code and
    documents are scored as they are written. Any other file holds one text per line,
    blank lines ignored.

    Raises:
        EvaluationError: the file is missing, not UTF-8 text, empty, holds NUL bytes, or a
            JSON Lines record that is not an object with a ``text`` string.
    """
    hint = (
        "give a UTF-8 text file with one held-out text of the skill's domain per line, a `.jsonl` file of "
        '{"text": ...} records, or a hook `module:fn`'
    )
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise EvaluationError(
            f"calibration data `{path}` cannot be read ({exc.strerror or exc}).", hints=[hint]
        ) from None
    if b"\0" in raw:
        raise EvaluationError(f"calibration data `{path}` holds NUL bytes; it is not a text file.", hints=[hint])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EvaluationError(
            f"calibration data `{path}` is not UTF-8 text (byte {exc.start}).", hints=[hint]
        ) from None
    if path.suffix.lower() == ".jsonl":
        texts = _jsonl_texts(path, text, hint)
    else:
        texts = [line.strip() for line in text.splitlines() if line.strip()]
    if not texts:
        raise EvaluationError(f"calibration data `{path}` holds no texts.", hints=[hint])
    if len(texts) > MAX_TEXTS:
        raise EvaluationError(
            f"calibration data `{path}` holds {len(texts)} texts; at most {MAX_TEXTS} are read.",
            hints=["a few dozen to a few thousand held-out texts are enough to measure retention"],
        )
    return texts


def _jsonl_texts(path: Path, text: str, hint: str) -> list[str]:
    import json

    lines = [(number, line) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    if len(lines) > MAX_TEXTS:
        return [""] * len(lines)  # not parsed: read_texts refuses the file by its count
    texts = []
    for number, line in lines:
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise EvaluationError(
                f"calibration data `{path}` line {number} is not JSON ({getattr(exc, 'msg', 'too deeply nested')}).",
                hints=[hint],
            ) from None
        value = record.get("text") if isinstance(record, dict) else None
        if not isinstance(value, str):
            raise EvaluationError(
                f"calibration data `{path}` line {number} is not an object with a `text` string.", hints=[hint]
            )
        if value.strip():
            texts.append(value)
    return texts


def _is_hook(spec: str) -> bool:
    target, sep, attr = spec.rpartition(":")
    return bool(sep and target and attr and "/" not in attr and not Path(spec).exists())


@dataclass(frozen=True)
class _Score:
    """One evaluation: the score, and for a text file each text's NLL summed over its tokens (float64)."""

    value: float
    per_text: torch.Tensor | None = None


class _Judge:
    """Retention against the two reference scores, and its paired-bootstrap lower bound (:data:`MARGIN`)."""

    def __init__(self, pre: _Score, ft: _Score, *, target: float, margin: bool) -> None:
        self.pre, self.ft, self.target = pre, ft, target
        self.gain = pre.value - ft.value
        self.idx: torch.Tensor | None = None
        if margin and pre.per_text is not None and ft.per_text is not None:
            n = pre.per_text.numel()
            self.idx = torch.randint(0, n, (RESAMPLES, n), generator=torch.Generator().manual_seed(SEED))
            self.full = (pre.per_text - ft.per_text)[self.idx].sum(1)
            # A resample where the fine-tune gains nothing (or the opposite of what it gains on
            # all the texts) cannot show that a coding keeps the gain: it counts as -inf.
            self.invalid = self.full * math.copysign(1.0, self.gain) <= 0

    @property
    def bootstraps(self) -> bool:
        return self.idx is not None

    def retention(self, score: _Score) -> float:
        return (self.pre.value - score.value) / self.gain

    def bound(self, score: _Score) -> float | None:
        """The 5th percentile of the resampled retentions (numpy's ``lower`` method), None without per-text losses."""
        if self.idx is None or score.per_text is None or self.pre.per_text is None:
            return None
        kept = (self.pre.per_text - score.per_text)[self.idx].sum(1) / self.full
        kept[self.invalid] = -math.inf
        return float(kept.sort().values[math.floor(QUANTILE * (RESAMPLES - 1))])

    def passes(self, kept: float, bound: float | None) -> bool:
        if kept < self.target:
            return False
        return not self.bootstraps or (bound is not None and math.isfinite(bound) and bound >= self.target)


class _TextScorer:
    """Token NLL of θ_pre + τ̂ on each text, in one fp32 model whose weights are reset for each call."""

    def __init__(self, base: Path, texts: list[str]) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(base))
        except Exception as exc:
            raise EvaluationError(
                f"the base model `{base}` has no tokenizer to score the calibration texts ({type(exc).__name__}).",
                hints=["save the tokenizer beside the weights, or pass a hook `module:fn` as `--calibration`"],
            ) from None
        self.model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
        self.state = self.model.state_dict()
        self.pre = {n: t.detach().clone() for n, t in self.state.items()}
        limit = int(getattr(self.model.config, "max_position_embeddings", 0) or 1 << 30)
        self.ids = [torch.tensor([tokenizer(t)["input_ids"][:limit]]) for t in texts]
        self.ids = [i for i in self.ids if i.shape[1] >= 2]
        self.tokens = sum(int(i.shape[1]) - 1 for i in self.ids)
        if not self.ids:
            raise EvaluationError(
                "every calibration text is shorter than two tokens, so no loss can be measured.",
                hints=["give longer held-out texts"],
            )

    def __call__(self, taus: Mapping[str, torch.Tensor] | None) -> _Score:
        with torch.no_grad():
            for n, t in self.state.items():
                t.copy_(self.pre[n])
            for n, tau in (taus or {}).items():
                if n in self.state:
                    self.state[n].add_(tau.to(self.state[n].dtype))
            sums = [float(self.model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1) for ids in self.ids]
        per_text = torch.tensor(sums, dtype=torch.float64)
        return _Score(float(per_text.sum()) / self.tokens, per_text)


class _HookScorer:
    """The user's hook on a scratch model directory: the base's files linked, the weights θ_pre + τ̂ in fp32."""

    def __init__(self, spec: str, base: Path) -> None:
        from .._format.checkpoint import Checkpoint
        from .._env.evaluate import load_hook

        self.hook = load_hook(spec)
        self.base = base
        self.metric: str | None = None
        with Checkpoint.open(base) as ck:
            self.pre = {n: ck.read_float32(n) if ck.info(n).is_float else ck.read(n) for n in ck.names()}

    def __call__(self, taus: Mapping[str, torch.Tensor] | None) -> _Score:
        from safetensors.torch import save_file

        from .._env.evaluate import run_hook
        from .._format.fsutil import link_or_copy

        scratch = Path(tempfile.mkdtemp(prefix="tvreg-calibrate-"))
        try:
            for f in self.base.iterdir():
                if f.is_file() and not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
                    link_or_copy(f, scratch / f.name)
            weights = {n: (t + taus[n] if taus and n in taus else t).contiguous() for n, t in self.pre.items()}
            save_file(weights, str(scratch / "model.safetensors"), metadata={"format": "pt"})
            scores = run_hook(self.hook, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if self.metric is None:
            if len(scores) == 1:
                self.metric = next(iter(scores))
            elif "loss" in scores:
                self.metric = "loss"
            else:
                raise EvaluationError(
                    f"calibration hook `{self.hook.spec}` returned {len(scores)} metrics and none is `loss`.",
                    hints=["return one metric, or name the one to calibrate on `loss`"],
                )
        if self.metric not in scores:
            raise EvaluationError(f"calibration hook `{self.hook.spec}` stopped returning metric `{self.metric}`.")
        return _Score(scores[self.metric])


def _data_identity(spec: str, texts: list[str] | None) -> str:
    if texts is not None:
        return hashlib.sha256("\n".join(texts).encode()).hexdigest()
    target = spec.rpartition(":")[0]
    path = Path(target)
    return hashlib.sha256(path.read_bytes() if path.is_file() else spec.encode()).hexdigest()


@reuse_svd()  # every low-rank candidate codes the same τ: one SVD per matrix for the whole search
def calibrate(
    taus: Mapping[str, torch.Tensor],
    *,
    base: str | os.PathLike[str],
    data: str | os.PathLike[str],
    min_retention: float = 0.99,
    margin: bool = True,
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
    candidates: list[tuple[str, dict[str, object]]] | None = None,
    on_evaluation: Callable[[str, float], None] | None = None,
) -> tuple[Codec, Calibration]:
    """Choose the smallest coding of ``taus`` whose gain retention on ``data`` is at least ``min_retention``.

    Args:
        taus: τ per tensor name of the base checkpoint, fp32.
        base: θ_pre (or G for a WiSE-FT delta): the model τ is added to.
        data: a text file of held-out texts, or an evaluation hook ``module:fn``.
        min_retention: the target, in (0, 1]; 1 picks ``exact``.
        margin: with a text file, accept a candidate only when the lower bound of its
            retention (5th percentile of a paired bootstrap over the texts) meets the target,
            not only the mean. A hook is always judged on its mean.
        max_evaluations: the most times the model is scored, the 2 references included; the
            search stops at it with the best coding measured so far (≥ 2).
        candidates: ``(codec, options)`` settings to try instead of :data:`CANDIDATES`.
        on_evaluation: called with ``(what, score)`` after each evaluation.

    Returns:
        The codec to build with (it codes each tensor as measured: the chosen setting, or
        the per-group plan) and the figures.

    Raises:
        EvaluationError: bad data or hook, a hook that fails, or a fine-tune that does not
            change the score on the data (retention is then undefined).
    """
    if not 0.0 < min_retention <= 1.0 or not math.isfinite(min_retention):
        raise EvaluationError(
            f"the minimum retention must be in (0, 1], not {min_retention}.",
            hints=["e.g. `--min-retention 0.99` keeps 99% of what the fine-tune gained"],
        )
    if isinstance(max_evaluations, bool) or not isinstance(max_evaluations, int) or max_evaluations < 2:
        raise EvaluationError(
            f"the evaluation budget must be an integer of at least 2, not {max_evaluations!r}.",
            hints=[f"calibration scores θ_pre and θ_pre + τ first; the default, {DEFAULT_MAX_EVALUATIONS}, "
                   "also covers the uniform bisection and the per-group search"],
        )  # fmt: skip
    base = Path(base)
    spec = str(data)
    texts: list[str] | None = None
    scorer: Callable[[Mapping[str, torch.Tensor] | None], _Score]
    if _is_hook(spec):
        scorer = hook_scorer = _HookScorer(spec, base)
    else:
        texts = read_texts(Path(spec))
        scorer = text_scorer = _TextScorer(base, texts)
    evaluations = 0

    def evaluate(what: str, t: Mapping[str, torch.Tensor] | None) -> _Score:
        nonlocal evaluations
        assert evaluations < max_evaluations, "the search plans within its budget"
        evaluations += 1
        try:
            score = scorer(t)
        except EvaluationError as exc:
            if texts is None and not exc.hints:
                exc.hints.append(
                    f"calibration calls the hook on scratch copies of `{base}` with candidate weights "
                    "and uses its one metric (or `loss`); check it runs on the base model"
                )
            raise
        if not math.isfinite(score.value):
            raise EvaluationError(f"calibration gave a score of {score.value} for {what}.")
        if on_evaluation:
            on_evaluation(what, score.value)
        return score

    pre = evaluate("θ_pre", None)
    ft = evaluate("θ_pre + τ", taus)
    if pre.value == ft.value:
        raise EvaluationError(
            f"the fine-tune scores the same as the base model on calibration data `{spec}` ({pre.value:.6g}), "
            "so retention cannot be measured.",
            hints=["give held-out data of the skill's domain, where the fine-tune differs from the base"],
        )
    judge = _Judge(pre, ft, target=min_retention, margin=margin)

    explored: list[dict] = []

    def measure(label: str, codings: Mapping[str, Encoded], size: int) -> tuple[_Score, float | None, bool]:
        decoded = _decode(taus, codings)
        score = evaluate(label, decoded)
        del decoded
        kept, bound = judge.retention(score), judge.bound(score)
        explored.append(
            {"codec": label, "bytes": size, "retention": kept, "retention_bound": _finite(bound), "loss": score.value}
        )
        return score, bound, judge.passes(kept, bound)

    exact = _Uniform(make_codec("exact"))
    chosen: Codec = exact
    # τ̂ = τ bit for bit keeps every text's gain, so its bound is 1 by construction.
    best = (ft, 1.0 if judge.bootstraps else None)
    plan: dict | None = None
    plan_reason: str | None = "a target of 100% keeps τ exact"
    if min_retention < 1.0:
        settings = []
        for name, opts in candidates if candidates is not None else CANDIDATES:
            coder = _Uniform(make_codec(name, opts), opts)
            # Only the sizes are kept: the few candidates the search measures are coded again,
            # so memory holds τ, one or two codings of it and one τ̂, not every candidate's coding.
            sizes = {n: len(coder.encode(t).data) for n, t in taus.items()}
            settings.append(_Setting(coder, sizes, family(name, opts)))
        settings.sort(key=lambda c: c.size)
        exact_setting = _Setting(exact, {n: len(exact.encode(t).data) for n, t in taus.items()}, ("exact",))
        families: dict[tuple, list[_Setting]] = {}
        for setting in settings:
            families.setdefault(setting.family, []).append(setting)
        winner, codings = exact_setting, None
        ran_out = False
        for members in sorted(families.values(), key=lambda f: f[0].size):
            # Only what would beat the best so far is worth an evaluation.
            smaller = [c for c in members if c.size < winner.size]
            lo, hi = 0, len(smaller)  # the family's smallest passing one is in [lo, hi]; len means none
            while lo < hi:
                if evaluations >= max_evaluations:
                    ran_out = True
                    break
                mid = (lo + hi) // 2
                trial = _encode_all(smaller[mid].coder, taus)
                score, bound, ok = measure(smaller[mid].coder.describe(), trial, smaller[mid].size)
                if ok:
                    hi, best, codings = mid, (score, bound), trial
                else:
                    lo = mid + 1
                del trial
            if hi < len(smaller):
                winner = smaller[hi]
            if ran_out:
                break
        chosen = _Planned(winner.coder, codings, winner.coder.describe())
        neighbour = _next_smaller(settings, winner)
        ladder = [
            c for c in reversed(settings) if neighbour and c.family == neighbour.family and c.size < neighbour.size
        ]
        if ran_out:
            plan_reason = f"the budget of {max_evaluations} evaluations ran out in the uniform bisection"
        elif neighbour is None:
            plan_reason = "the smallest candidate passes for every matrix"
        elif max_evaluations - evaluations < _plan_cost(1):
            plan_reason = f"the budget of {max_evaluations} evaluations leaves no room for a per-group search"
        else:
            found = _per_group(
                taus, winner, neighbour, codings, judge, measure, budget=max_evaluations - evaluations,
                kept_uniform=judge.retention(best[0]), ladder=ladder,
            )  # fmt: skip
            plan, plan_reason = found.record, None
            if found.codings is not None and found.best is not None:
                chosen, best = _Planned(exact, found.codings, found.label), found.best
    if texts is not None:
        n_texts: int | None = len(texts)
        n_tokens: int | None = text_scorer.tokens
        metric = "loss"
    else:
        n_texts = n_tokens = None
        metric = hook_scorer.metric or "loss"
    if judge.bootstraps:
        margin_record, margin_reason = dict(MARGIN), None
    elif texts is None:
        margin_record, margin_reason = None, "a hook returns one score, which cannot be resampled: judged on the mean"
    else:
        margin_record, margin_reason = None, "turned off (--no-margin): judged on the mean"
    figures = Calibration(
        retention=judge.retention(best[0]),
        target=min_retention,
        chosen=chosen.describe(),
        data=Path(spec).name if texts is not None else spec,
        data_sha256=_data_identity(spec, texts),
        texts=n_texts,
        tokens=n_tokens,
        loss_pre=pre.value,
        loss_finetuned=ft.value,
        loss_chosen=best[0].value,
        evaluations=evaluations,
        metric=metric,
        retention_bound=_finite(best[1]),
        margin=margin_record,
        margin_reason=margin_reason,
        max_evaluations=max_evaluations,
        plan=plan,
        plan_reason=plan_reason,
        explored=sorted(explored, key=lambda e: e["bytes"]),
    )
    return chosen, figures


@dataclass
class _Found:
    record: dict
    codings: dict[str, Encoded] | None = None
    label: str = ""
    best: tuple[_Score, float | None] | None = None


def _next_smaller(settings: list[_Setting], winner: _Setting) -> _Setting | None:
    """The setting the per-group search moves layers to: the next smaller one of the winner's family, else of all."""
    below = [c for c in settings if c.size < winner.size]
    same = [c for c in below if c.family == winner.family]
    choice = same or below
    return choice[-1] if choice else None


def _per_group(
    taus: Mapping[str, torch.Tensor],
    setting: _Setting,
    smaller: _Setting,
    codings: Mapping[str, Encoded] | None,
    judge: _Judge,
    measure: Callable[[str, Mapping[str, Encoded], int], tuple[_Score, float | None, bool]],
    *,
    budget: int,
    kept_uniform: float,
    ladder: list[_Setting] | None = None,
) -> _Found:
    """Move the layers that feel it least from ``setting`` (which passes) to the next smaller ``smaller``.

    Each group's sensitivity is measured once: the retention with only that group at
    ``smaller``. Groups are ordered by retention lost per byte saved, and the longest
    prefix of that order that still passes (the judge's test, bound included) is found by
    bisection, each step one evaluation of the combined assignment. At most
    :func:`_plan_cost` of the number of groups, which adjacent layers are merged to keep
    within ``budget``.

    ``ladder``: the settings below ``smaller`` in its family, largest first. The groups moved
    to ``smaller`` then step down it one setting at a time — the longest passing prefix of the
    same order at the next setting, by bisection, until a step moves none, the ladder ends or
    the budget does. The groups count leaves room for one such step.
    """
    ladder = list(ladder or [])
    levels = 2 if ladder else 1
    most = 1
    while most < len(taus) and _plan_cost(most + 1, levels) <= budget:
        most += 1
    groups = _groups(taus, most)
    big = dict(codings) if codings is not None else _encode_all(setting.coder, taus)
    small = _encode_all(smaller.coder, taus)
    named = f"{setting.coder.describe()}; {smaller.coder.describe()} on"
    rows = [_Group(g, names, sum(setting.sizes[n] - smaller.sizes[n] for n in names)) for g, names in groups]
    for row in rows:
        if row.saved <= 0:
            continue  # the smaller setting is no smaller here: nothing to gain, no probe spent
        score, bound, _ = measure(
            f"{named} {row.group}", {**big, **{n: small[n] for n in row.names}}, setting.size - row.saved
        )
        row.retention, row.bound = judge.retention(score), bound
    order = sorted(
        (r for r in rows if r.retention is not None),
        key=lambda r: (max(0.0, kept_uniform - (r.retention or 0.0)) / r.saved, -r.saved, rows.index(r)),
    )
    found = _Found(record={})

    def first(mid: int) -> tuple[bool, tuple]:
        trial = {**big, **{n: small[n] for r in order[:mid] for n in r.names}}
        label = f"{named} {mid} of {len(rows)} groups"
        score, bound, ok = measure(label, trial, setting.size - sum(r.saved for r in order[:mid]))
        return ok, (trial, label, (score, bound))

    lo, best, verifications = _longest_passing_prefix(len(order), first)
    if best is not None:
        found.codings, found.label, found.best = best
    for r in order[:lo]:
        r.moved, r.level = True, 1
    spent = len(order) + verifications
    prefix, deeper = order[:lo], []
    found_size = setting.size - sum(r.saved for r in prefix)
    sizes_now = {n: smaller.sizes[n] for r in prefix for n in r.names}
    for step in ladder:
        if found.codings is None or not prefix or spent >= budget:
            break
        coded = _encode_all(step.coder, {n: taus[n] for r in prefix for n in r.names})

        def further(mid: int, step=step, coded=coded, passing=found.codings, base=found.label, size_was=found_size):
            trial = {**passing, **{n: coded[n] for r in prefix[:mid] for n in r.names}}
            size = size_was - sum(sizes_now[n] - step.sizes[n] for r in prefix[:mid] for n in r.names)
            label = f"{base}; {step.coder.describe()} on {mid} of them"
            score, bound, ok = measure(label, trial, size)
            return ok, (trial, label, (score, bound), size)

        kept, best_step, tried = _longest_passing_prefix(len(prefix), further, limit=budget - spent)
        spent += tried
        deeper.append({"setting": step.coder.describe(), "moved": kept, "verifications": tried})
        verifications += tried
        if best_step is None:
            break
        found.codings, found.label, found.best, found_size = best_step
        prefix = prefix[:kept]
        for r in prefix:
            r.level += 1
        sizes_now.update({n: step.sizes[n] for r in prefix for n in r.names})
    found.record = {
        "method": "per-group sensitivity",
        "setting": setting.coder.describe(),
        "smaller": smaller.coder.describe(),
        "groups": [r.record() for r in rows],
        "moved": lo,
        "deeper": deeper,
        "probes": len(order),
        "verifications": verifications,
        "evaluations": len(order) + verifications,
    }
    return found



def _longest_passing_prefix(
    count: int, attempt: Callable[[int], tuple[bool, Any]], *, limit: int | None = None
) -> tuple[int, Any, int]:
    """The largest ``m ≤ count`` for which ``attempt(m)`` passes, by bisection; ``attempt(0)`` is known to pass.

    Why one helper: the per-group search asks this once to move groups to the smaller
    setting and once per further step down its family, with the same order and the same
    monotone assumption (a prefix of a passing prefix passes). Returns ``(m, what the
    passing attempt at m returned or None when m is 0, attempts made)``; ``limit`` caps the
    attempts (the budget left), leaving the best prefix found so far.
    """
    lo, hi, tries, best = 0, count, 0, None
    while lo < hi and (limit is None or tries < limit):
        mid = (lo + hi + 1) // 2
        ok, result = attempt(mid)
        tries += 1
        if ok:
            lo, best = mid, result
        else:
            hi = mid - 1
    return lo, best, tries

@dataclass(eq=False)
class _Group:
    """One group of the per-group search: its matrices, the bytes the smaller setting saves, its probe."""

    group: str
    names: list[str]
    saved: int
    retention: float | None = None
    bound: float | None = None
    moved: bool = False
    level: int = 0
    """0: the uniform setting; 1: the smaller one; 2 and on: each further step down its family."""

    def record(self) -> dict:
        return {
            "group": self.group, "tensors": len(self.names), "bytes_saved": self.saved,
            "retention": self.retention, "retention_bound": _finite(self.bound), "smaller": self.moved,
            "level": self.level,
        }  # fmt: skip


def _finite(value: float | None) -> float | None:
    """JSON has no infinities: a bound of -inf (too few resamples where the fine-tune gains) is recorded as null."""
    return value if value is not None and math.isfinite(value) else None
