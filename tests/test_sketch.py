"""Sketches: deterministic bytes, and estimates that match the exact values of real fine-tunes."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from helpers import copy_model
from tiny_models import (
    CODING_TEXTS,
    SCIENCE_TEXTS,
    make_tokenizer,
    read_state_dict,
    save_model_dir,
    train_steps,
)
from transformers import AutoModelForCausalLM

from tvreg._build.build import build_skill
from tvreg._format.artifact import Artifact
from tvreg._format.interference import SkillEntry, check_sketches, compare
from tvreg._format.sketch import (
    TOP_FRACTION,
    Sketch,
    SketchBuilder,
    SketchError,
    layer_of,
    load_cached,
    sketch_artifact,
    sketch_tensor,
)


def _synthetic(n: int, salt: int = 0) -> torch.Tensor:
    """Integer-derived values: the same floats on every machine, no RNG or libm involved."""
    i = np.arange(n, dtype=np.int64)
    return torch.from_numpy((((i * 7919 + salt * 104729) % 2001) - 1000).astype(np.float32) / 1e5)


def _sketch_of(tensors: dict[str, torch.Tensor], order=None) -> bytes:
    b = SketchBuilder()
    for name in order or tensors:
        b.add(name, tensors[name])
    return b.finish(
        skill="s", version="1.0.0", base_fingerprint="0" * 64, artifact_digest="sha256:" + "0" * 64
    ).to_bytes()


def test_same_tau_same_bytes_in_any_order_and_thread_count():
    tensors = {
        "model.layers.0.mlp.up_proj.weight": _synthetic(300_000).reshape(600, 500),
        "model.layers.1.mlp.up_proj.weight": _synthetic(2_500_000, 1),
        "model.norm.weight": _synthetic(64, 2),
    }
    first = _sketch_of(tensors)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert _sketch_of(tensors, order=list(reversed(tensors))) == first
    finally:
        torch.set_num_threads(before)
    # Golden digest: a change to the hash, buckets, sample positions or layout changes the bytes,
    # and must come with a new SKETCH_VERSION, since published sketches would stop being comparable.
    assert hashlib.sha256(first).hexdigest() == GOLDEN


GOLDEN = "1864101ca1e3255bde8c0eb3ef0241b49d30fb686229a1c2d13374bf28aadc6d"


def _full_mantissa(n: int, salt: int) -> torch.Tensor:
    """Integer-derived values with full float32 mantissas, so the order float64 sums are taken in shows."""
    i = np.arange(n, dtype=np.int64)
    return torch.from_numpy((((i * 2654435761 + salt) % 1000003) - 500001).astype(np.float32) / np.float32(3e6))


@pytest.mark.parametrize("threads", [1, 3])
def test_big_tensors_sketched_chunk_by_chunk_on_threads_keep_the_golden_bytes(threads):
    """Chunks of a big tensor are sketched on several threads and their sums joined in chunk order:
    the bytes are those of one thread walking the chunks (this digest was made before the split; with
    these values, summing the chunks' squares in another order changes ‖τ‖)."""
    from tvreg._format.codecs import zstd_frame

    tensors = {"model.embed_tokens.weight": _full_mantissa(5_000_000, 0).reshape(5000, 1000),
               "lm_head.weight": _full_mantissa(3_300_000, 1).reshape(3300, 1000)}  # fmt: skip
    before = zstd_frame.decode_threads()
    zstd_frame.set_decode_threads(threads)
    try:
        got = _sketch_of(tensors)
    finally:
        zstd_frame.set_decode_threads(before)
    assert hashlib.sha256(got).hexdigest() == "2ba104e4d915faf33600673804c42c74e3709570748bc9370acd15fb3eae0864"


def test_sketch_roundtrip_and_small_tensors_exact():
    tau = _synthetic(100)
    s = sketch_tensor("x.weight", tau)
    assert s.exact and np.array_equal(s.sample, tau.numpy())
    data = _sketch_of({"a.weight": _synthetic(5000), "b.weight": tau})
    back = Sketch.from_bytes(data)
    assert back.to_bytes() == data
    assert back.tensors["a.weight"].projection.shape == (512,)
    assert back.tensors["a.weight"].norm == pytest.approx(float(_synthetic(5000).double().norm()), rel=1e-12)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d[:100], "header length is past the end"),
        (lambda d: d + b"\0\0\0\0", "arrays end at byte"),
        (lambda d: d.replace(b'sketch_version\\":1', b'sketch_version\\":9'), "sketch version 9"),
        (lambda d: d.replace(b"tvreg.sketch", b"tvreg.sketcX"), "no tvreg sketch metadata"),
    ],
)
def test_malformed_sketches_are_refused(mutate, message):
    data = _sketch_of({"a.weight": _synthetic(5000)})
    with pytest.raises(SketchError, match=message):
        Sketch.from_bytes(mutate(data), where="`x.tvsketch`")


def test_layer_of():
    assert layer_of("model.layers.12.mlp.down_proj.weight") == "model.layers.12"
    assert layer_of("model.embed_tokens.weight") == "model.embed_tokens"


# -- accuracy on real fine-tunes ---------------------------------------------------------------


def _finetune(family, out, texts, seed, steps=8):
    tok = make_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(family.pre, dtype=torch.float32)
    train_steps(model, texts, tok, steps=steps, lr=2e-3, seed=seed)
    save_model_dir(model, tok, out, dtype=torch.float32)
    return out


def _negated(family, out):
    """θ_pre − τ_science: a skill pointing exactly away from science."""
    pre, sci = read_state_dict(family.pre), read_state_dict(family.science)
    model = AutoModelForCausalLM.from_pretrained(family.pre, dtype=torch.float32)
    model.load_state_dict({k: 2 * pre[k] - sci[k] for k in pre}, strict=False)
    save_model_dir(model, make_tokenizer(), out, dtype=torch.float32)
    return out


@pytest.fixture(scope="module")
def skills(family, tmp_path_factory):
    root = tmp_path_factory.mktemp("sketch-skills")
    models = {
        "science": family.science,
        "science-b": _finetune(family, root / "science-b", SCIENCE_TEXTS, seed=7),
        "coding": family.coding,
        "coding-long": _finetune(family, root / "coding-long", CODING_TEXTS, seed=11, steps=24),
        "unscience": _negated(family, root / "unscience"),
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TVREG_CACHE_DIR", str(root / "cache"))
        built = {
            name: build_skill(
                family.pre, finetuned=path, output=root / f"{name}.tvskill", name=name, version="1.0.0"
            )
            for name, path in models.items()
        }
    return built


def _exact(path_a, path_b):
    """Exact cosine and top-20% sign conflict from the full vectors, tensor by tensor."""
    dot = na = nb = 0.0
    conflicting = both_top = 0
    with Artifact(path_a) as a, Artifact(path_b) as b:
        for name in a.manifest.tensors:
            x, y = a.decode(name).double().flatten(), b.decode(name).double().flatten()
            dot += float(x @ y)
            na += float(x @ x)
            nb += float(y @ y)
            n = x.numel()
            k = n - max(1, math.ceil(TOP_FRACTION * n)) + 1
            tx, ty = x.abs().kthvalue(k).values, y.abs().kthvalue(k).values
            top = (x.abs() >= tx) & (y.abs() >= ty) & (x != 0) & (y != 0)
            both_top += int(top.sum())
            conflicting += int((top & (torch.sign(x) != torch.sign(y))).sum())
    return dot / math.sqrt(na * nb), conflicting / both_top


PAIRS = [
    ("science", "science-b"),  # same data, other batches: high similarity
    ("science", "coding"),  # other data: low similarity
    ("coding", "coding-long"),
    ("science-b", "coding-long"),
    ("science", "unscience"),  # exactly opposed
]


def test_estimates_match_exact_values(skills):
    seen = []
    for a, b in PAIRS:
        exact_cos, exact_conflict = _exact(skills[a].path, skills[b].path)
        est = compare(skills[a].sketch, skills[b].sketch)
        seen.append((a, b, exact_cos, est.cosine, exact_conflict, est.sign_conflict))
        assert abs(est.cosine - exact_cos) <= 0.05, seen[-1]
        assert abs(est.sign_conflict - exact_conflict) <= 0.05, seen[-1]
    cos = {(a, b): c for a, b, c, *_ in seen}
    # The pairs really span the range, so a sketch that estimated a constant would fail.
    assert cos[("science", "science-b")] > 0.4
    assert abs(cos[("science", "coding")]) < 0.25
    assert cos[("science", "unscience")] < -0.99


def test_sketch_from_artifact_equals_sketch_from_build(skills):
    built = skills["coding"]
    assert sketch_artifact(built.path).to_bytes() == built.sketch.to_bytes()


def test_build_caches_the_sketch_by_artifact_digest(family, tmp_path):
    res = build_skill(
        family.pre, finetuned=family.science, output=tmp_path / "s.tvskill", name="s", version="1.0.0"
    )
    cached = load_cached(res.sketch.artifact_digest)
    assert cached is not None and cached.to_bytes() == res.sketch.to_bytes()
    size = len(res.sketch.to_bytes())
    assert size < (tmp_path / "s.tvskill").stat().st_size


def test_opposed_pair_is_flagged_and_related_pair_is_not(skills):
    entries = [SkillEntry(n, skills[n].sketch, 0.5) for n in ("science", "science-b", "unscience")]
    report = check_sketches(entries)
    by_pair = {(p.a, p.b): p for p in report.pairs}
    assert not by_pair[("science", "science-b")].warnings
    opposed = by_pair[("science", "unscience")]
    assert any("opposite directions" in w for w in opposed.warnings)
    assert any("ties" in s for s in opposed.suggestions)
    drowned = compare(skills["science"].sketch, skills["coding"].sketch, weight_a=1.0, weight_b=0.01)
    assert any("drowned out" in w for w in drowned.warnings)


def test_check_and_info_on_local_files(skills, family, tmp_path):
    from click.testing import CliRunner

    from tvreg.cli import main

    def run(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    model = copy_model(family.general, tmp_path / "mymodel")
    assert run("init", model, "--base", family.pre, "--general-size", 1000).exit_code == 0
    science, unscience = skills["science"].path, skills["unscience"].path
    res = run(
        "check", science, unscience, "--into", model, "--weight", "science=0.5", "--weight", "unscience=0.5"
    )
    assert res.exit_code == 0, res.output
    assert "science@1.0.0 × unscience@1.0.0  (flagged)" in res.stdout
    assert (
        "warning: `science@1.0.0` and `unscience@1.0.0` pull in opposite directions (cosine -" in res.stderr
    )
    assert "hint: merge with `--method ties` or `--method dare_ties`" in res.stderr
    strict = run(
        "check",
        science,
        unscience,
        "--into",
        model,
        "--strict",
        "--weight",
        "science=1",
        "--weight",
        "unscience=1",
    )
    assert strict.exit_code == 1
    # Installed skills are part of the set checked; ω without |D| is assumed 1 and said so.
    assert run("install", science, "--into", model, "--weight", "science=0.5").exit_code == 0
    report = json.loads(run("check", skills["science-b"].path, "--into", model, "--format", "json").stdout)
    assert [(s["skill"], s["weight_source"]) for s in report["skills"]] == [
        ("science@1.0.0", "installed (user)"),
        ("science-b@1.0.0", "assumed (|D| or |G| unknown; pass --weight)"),
    ]
    assert report["pairs"][0]["cosine"] > 0.4 and not report["pairs"][0]["warnings"]
    res = run("install", unscience, "--into", model, "--weight", "unscience=0.5", "--dry-run")
    assert res.exit_code == 0 and "pull in opposite directions" in res.stderr
    info = run("info", science)
    assert "norm profile" in info.stdout and "model.layers.1" in info.stdout
    profile = json.loads(run("info", science, "--format", "json").stdout)["norm_profile"]
    assert math.isclose(math.sqrt(sum(v * v for v in profile.values())), skills["science"].sketch.norm)
