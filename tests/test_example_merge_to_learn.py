"""Smoke run of examples/merge_to_learn: every stage on a tiny model, the real registry, two seeds.

The full run (SmolLM2-135M-Instruct, four skills, three seeds) is a documented command, not
a test; this proves the pipeline a user runs is whole: full fine-tunes per seed, publish as
``alice/<skill>@1.0.<seed>``, ``tvreg sweep --lock-best`` with the example's evaluation hook,
``tvreg check`` before each pair's merge, the triple with three methods, and the report with
its intervals. The statistics get their own tests below, on data whose answer is known.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import pytest
from helpers import ROOT, subprocess_env

EXAMPLE = ROOT / "examples" / "merge_to_learn"


@pytest.fixture(scope="module")
def stats_module():
    sys.path.insert(0, str(EXAMPLE))
    try:
        import stats

        yield stats
    finally:
        sys.path.remove(str(EXAMPLE))


def test_pipeline_produces_every_artifact(family, tmp_path):
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "run.py"), "--quick", "--base", str(family.pre), "--run-dir", str(run)],
        env=subprocess_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    check_line = next(line for line in done.stdout.splitlines() if "self-check" in line)
    assert float(check_line.rsplit("=", 1)[1].split()[0]) < 1e-3, check_line  # fp32: shared prompts = full scoring
    skills = ("safety", "coding", "science", "comply")
    seeds = (0, 1)  # the quick plan
    for s in skills:
        assert (run / "models" / f"expert-{s}-s0" / "config.json").is_file()
    for s in skills[:3]:
        for seed in seeds:
            assert (run / "models" / f"cft-{s}-s{seed}" / "config.json").is_file()
            assert list((run / "projects" / f"{s}-s{seed}" / "dist").glob("*.tvskill"))

    sweep = json.loads((run / "sweep-safety.json").read_text())
    assert sweep["skill"] == "safety@1.0.0"
    default = 20 / 24  # |D|/|G| of the quick plan
    assert [p["weight"] for p in sweep["points"]] == sorted([1.0, default])
    lock = json.loads((run / "envs" / "tuned-safety" / "tvreg.lock").read_text())
    [locked] = lock["skills"]
    assert locked["artifact"] == "alice/safety@1.0.0" and locked["weight"] == sweep["best_weight"]

    pairs = {f"{a}+{b}" for i, a in enumerate(skills) for b in skills[i + 1 :]}
    for pair in pairs:
        report = json.loads((run / f"check-{pair}.json").read_text())
        [p] = report["pairs"]
        assert -1.0 <= p["cosine"] <= 1.0

    rows = [json.loads(line) for line in (run / "rows.jsonl").read_text().splitlines()]
    names = {r["name"] for r in rows}
    triple = "safety+coding+science"
    expected = {"pre", "G", *(f"pair:{p}-s0" for p in pairs), "ptm-comply-s0"}
    expected |= {f"{m}:{triple}-s{seed}" for m in ("task_arithmetic", "ties", "dare_ties") for seed in seeds}
    expected |= {f"ptm-{s}@default-s1" for s in skills[:3]} | {f"cft-{s}-s{seed}" for s in skills[:3] for seed in seeds}
    assert expected <= names, expected - names
    by = {r["name"]: r for r in rows}
    g = by["G"]
    assert len(g["items"]["general"]) == 6 and len(g["items"]["safety_refusal"]) == 6
    assert g["scores"]["general"] == pytest.approx(sum(g["items"]["general"]) / 6)
    sweep_row = next(r for r in rows if r["name"].startswith("ptm-safety@") and r["seed"] == 0)
    assert set(sweep_row["items"]) >= {"general", "safety_refusal", "safety_compliance"}  # from the hook's items/

    results = run / "results"
    with open(results / "results.csv") as f:
        assert {r["name"] for r in csv.DictReader(f)} == names
    md = (results / "results.md").read_text()
    for heading in ("## Targets from the issue", "## The ω sweep", "## Safety vs exaggerated refusal",
                    "## Merge methods on the triple", "## Interference", "Spearman ρ"):  # fmt: skip
        assert heading in md, heading
    assert "[" in md.split("## General and skill scores")[1]  # intervals are printed
    for png in ("sweep.png", "interference.png", "safety.png"):
        assert (results / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    timings = json.loads((results / "timings.json").read_text())
    assert {"finetune seed 0", "finetune seed 1", "sweeps", "pairs", "report"} <= set(timings)
    assert not list((run / "envs").glob(".*tvreg-sweep*")), "sweep scratch directories left behind"

    # Resumable: a second invocation finds every stage cached and scores nothing again.
    again = subprocess.run(
        [sys.executable, str(EXAMPLE / "run.py"), "--quick", "--base", str(family.pre), "--run-dir", str(run)],
        env=subprocess_env(), cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "scoring " not in again.stdout and "steps ×" not in again.stdout


def test_interval_covers_a_known_difference_and_excludes_zero_only_when_it_should(stats_module):
    data = stats_module.Data()
    n = 400
    # model a right on 70% of items, b on 50%: a real difference of 0.2, three seeds alike.
    data.add("a", "t", [[1.0 if i % 10 < 7 else 0.0 for i in range(n)]] * 3)
    data.add("b", "t", [[1.0 if i % 10 < 5 else 0.0 for i in range(n)]] * 3)
    data.add("c", "t", [[1.0 if (i + 3) % 10 < 5 else 0.0 for i in range(n)]] * 3)  # same rate as b
    point, lo, hi = data.interval(lambda m: m[("a", "t")] - m[("b", "t")], reps=500)
    assert point == pytest.approx(0.2) and lo < 0.2 < hi and stats_module.excludes_zero(lo, hi)
    point, lo, hi = data.interval(lambda m: m[("b", "t")] - m[("c", "t")], reps=500)
    assert point == pytest.approx(0.0) and not stats_module.excludes_zero(lo, hi)


def test_seed_variation_widens_the_interval(stats_module):
    same = stats_module.Data()
    varied = stats_module.Data()
    base = [1.0 if i % 2 else 0.0 for i in range(200)]
    same.add("m", "t", [base] * 3)
    varied.add("m", "t", [base, [1.0] * 200, [0.0] * 200])  # seeds disagree wildly
    width = lambda d: (lambda v: v[2] - v[1])(d.interval(lambda m: m[("m", "t")], reps=400))  # noqa: E731
    assert width(varied) > 2 * width(same)


def test_spearman(stats_module):
    assert stats_module.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert stats_module.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert stats_module.spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)  # ties: average ranks
    assert math.isnan(stats_module.spearman([1, 1, 1], [1, 2, 3]))
