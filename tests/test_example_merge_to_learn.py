"""Smoke run of examples/merge_to_learn: every stage on a tiny model, one skill, the real registry.

The full run (SmolLM2-135M-Instruct, three skills) is a documented command, not a test;
this proves the pipeline a user runs is whole: fine-tunes (full and LoRA), publish (the LoRA
skill through ``build.adapter``), install by name, ``tvreg sweep --lock-best`` with the
example's evaluation hook, and the report.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

from helpers import ROOT, subprocess_env


def test_pipeline_produces_every_artifact(family, tmp_path):
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "merge_to_learn" / "run.py"), "--quick",
         "--base", str(family.pre), "--skills", "safety", "--run-dir", str(run)],
        env=subprocess_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for model in ("G", "expert-safety", "cft-safety", "lora-expert-safety"):
        assert (run / "models" / model / "config.json").is_file(), model
    assert (run / "models" / "lora-safety" / "adapter_model.safetensors").is_file()
    assert list((run / "projects" / "safety" / "dist").glob("*.tvskill"))
    assert list((run / "projects" / "safety-lora" / "dist").glob("*.tvskill"))
    assert "Published alice/safety@1.0.0" in done.stdout or "alice/safety" in done.stdout

    sweep = json.loads((run / "sweep-safety.json").read_text())
    assert sweep["skill"] == "safety@1.0.0"
    weights = [p["weight"] for p in sweep["points"]]
    default = 20 / 24  # |D|/|G| of the quick plan
    assert weights == sorted([0.5, 1.0, default])
    assert [p["default"] for p in sweep["points"]] == [w == default for w in weights]
    lock = json.loads((run / "envs" / "tuned-safety" / "tvreg.lock").read_text())
    [locked] = lock["skills"]
    assert locked["artifact"] == "alice/safety@1.0.0" and locked["weight"] == sweep["best_weight"]

    results = run / "results"
    with open(results / "results.csv") as f:
        rows = list(csv.DictReader(f))
    names = {r["name"] for r in rows}
    lora = json.loads((run / "sweep-safety-lora.json").read_text())
    assert lora["skill"] == "safety-lora@1.0.0"
    assert [p["weight"] for p in lora["points"]] == [default, 1.0]
    assert "val_safety" not in lora["points"][0]["scores"]  # LoRA points skip the validation split
    assert names == {
        "pre", "G", "expert-safety", "cft-safety", "lora-expert-safety",
        *(f"ptm-safety@{w:.4g}" for w in weights), *(f"lora-ptm-safety@{w:.4g}" for w in (default, 1.0)),
    }  # fmt: skip
    for r in rows:
        for col in ("general", "safety_refusal", "safety_compliance", "general_norm"):
            assert 0.0 <= float(r[col]) <= 10.0, (r["name"], col)
        assert math.isfinite(float(r["general_margin"])), r["name"]  # nats; negative when a distractor wins
    g = next(r for r in rows if r["name"] == "G")
    assert g["general_norm"] == "1.000" and g["general_margin_norm"] in ("1.000", "")
    md = (results / "results.md").read_text()
    assert "## Targets from the issue" in md and "|D|/|G| within 10%" in md
    for png in ("sweep.png", "interference.png", "safety.png"):
        assert (results / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    timings = json.loads((results / "timings.json").read_text())
    assert {"finetune", "publish", "sweeps", "report"} <= set(timings)
    assert not list((run / "envs").glob(".*tvreg-sweep*")), "sweep scratch directories left behind"
