"""Calibrated ``auto``: choose the smallest coding of τ that keeps a target share of what the fine-tune gained.

Why not the per-tensor relative error ``auto`` uses without data: ‖τ̂ − τ‖/‖τ‖ is a
weight-space proxy, and the settings that keep a skill on real pairs have per-tensor
errors of 0.3–3 (issue 23). What a user cares about is the model's behaviour, so this
measures it: the loss of θ_pre, of θ_pre + τ and of θ_pre + τ̂ on held-out data, and the
**gain retention** (loss_pre − loss_τ̂) / (loss_pre − loss_τ). The formula is the same
for a score where higher is better (both differences flip sign), so a hook may return
either a loss or an accuracy.

Search: every candidate coding (one setting for every matrix; vectors and scalars stay
``exact``, as in uncalibrated ``auto``) is encoded once to learn its size, candidates are
sorted by size, and the smallest passing one is found by bisection, assuming retention
grows with size along that order. Cost: 2 evaluations (θ_pre and θ_pre + τ) plus
⌈log₂(n + 1)⌉ for n lossy candidates; the winner is always one that was measured. A
target of 1.0 means "keep τ bit for bit" (a lossy coding can measure above 100% by
noise): ``exact`` is chosen after the 2 reference evaluations.

Margin: a mean over N texts is itself an estimate. On real pairs a candidate that kept
99.0% on the calibration texts kept 97.0% on disjoint held-out texts, so with per-text
losses (a text file) a candidate passes only when the 5th percentile of a paired bootstrap
of retention also meets the target: 1000 resamples of the text indices (seed 0), the same
indices for θ_pre, θ_pre + τ and θ_pre + τ̂, each resample's retention
Σ(nll_pre − nll_τ̂) / Σ(nll_pre − nll_τ) over its texts (per-text NLL summed over tokens,
so the token weighting of the mean is kept). A hook returns one number, which cannot be
resampled: it is judged on the mean, and the manifest says so.

Data: a UTF-8 text file of held-out texts, one per line (blank lines ignored), scored with
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .._format.codecs import Codec, Encoded, get_codec, make_codec
from ..errors import EvaluationError

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


def _setting(codec: str, **opts: object) -> tuple[str, dict[str, object]]:
    return codec, opts


CANDIDATES: list[tuple[str, dict[str, object]]] = [
    _setting("bf16"),
    _setting("int8"),
    *[_setting("sparse", density=d, select="random") for d in (0.5, 0.3, 0.2, 0.1, 0.05, 0.02)],
    *[_setting("sparse", density=d) for d in (0.3, 0.1, 0.03)],
    *[_setting("lowrank", energy=e, fallback="int8") for e in (0.99, 0.9, 0.75, 0.5)],
]
"""The lossy settings tried, one for every matrix of τ (sorted by measured size before the search)."""


def read_texts(path: Path) -> list[str]:
    """The held-out texts of a calibration file: one per line, blank lines ignored.

    Raises:
        EvaluationError: the file is missing, not UTF-8 text, empty, or holds NUL bytes.
    """
    hint = "give a UTF-8 text file with one held-out text of the skill's domain per line, or a hook `module:fn`"
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
    texts = [line.strip() for line in text.splitlines() if line.strip()]
    if not texts:
        raise EvaluationError(f"calibration data `{path}` holds no texts.", hints=[hint])
    if len(texts) > MAX_TEXTS:
        raise EvaluationError(
            f"calibration data `{path}` holds {len(texts)} texts; at most {MAX_TEXTS} are read.",
            hints=["a few dozen to a few thousand held-out texts are enough to measure retention"],
        )
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


def calibrate(
    taus: Mapping[str, torch.Tensor],
    *,
    base: str | os.PathLike[str],
    data: str | os.PathLike[str],
    min_retention: float = 0.99,
    margin: bool = True,
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
        candidates: ``(codec, options)`` settings to try instead of :data:`CANDIDATES`.
        on_evaluation: called with ``(what, score)`` after each evaluation.

    Returns:
        The codec to build with (it codes every matrix with the chosen setting) and the figures.

    Raises:
        EvaluationError: bad data or hook, a hook that fails, or a fine-tune that does not
            change the score on the data (retention is then undefined).
    """
    if not 0.0 < min_retention <= 1.0 or not math.isfinite(min_retention):
        raise EvaluationError(
            f"the minimum retention must be in (0, 1], not {min_retention}.",
            hints=["e.g. `--min-retention 0.99` keeps 99% of what the fine-tune gained"],
        )
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
    chosen: Codec = _Uniform(make_codec("exact"))
    # τ̂ = τ bit for bit keeps every text's gain, so its bound is 1 by construction.
    best = (ft, 1.0 if judge.bootstraps else None)
    if min_retention < 1.0:
        sized = []
        for name, opts in candidates if candidates is not None else CANDIDATES:
            coder = _Uniform(make_codec(name, opts), opts)
            # Only the size is kept: the few candidates the bisection measures are coded again,
            # so memory holds τ and one τ̂, not every candidate's coding.
            sized.append((sum(len(coder.encode(t).data) for t in taus.values()), coder))
        sized.sort(key=lambda s: s[0])
        lo, hi = 0, len(sized)  # the answer is in [lo, hi]; hi means "none passes"
        while lo < hi:
            mid = (lo + hi) // 2
            size, coder = sized[mid]
            decoded = {}
            for n, t in taus.items():
                e = coder.encode(t)
                decoded[n] = get_codec(e.codec or coder.inner.name).decode(e.data, tuple(t.shape), e.params, where=n)
            score = evaluate(coder.describe(), decoded)
            del decoded
            kept, bound = judge.retention(score), judge.bound(score)
            explored.append(
                {"codec": coder.describe(), "bytes": size, "retention": kept, "retention_bound": _finite(bound),
                 "loss": score.value}
            )  # fmt: skip
            if judge.passes(kept, bound):
                hi, chosen, best = mid, coder, (score, bound)
            else:
                lo = mid + 1
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
        explored=sorted(explored, key=lambda e: e["bytes"]),
    )
    return chosen, figures


def _finite(value: float | None) -> float | None:
    """JSON has no infinities: a bound of -inf (too few resamples where the fine-tune gains) is recorded as null."""
    return value if value is not None and math.isfinite(value) else None
