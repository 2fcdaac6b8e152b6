"""The compression report: `tvreg build` and `tvreg info` say how lossy a skill is, worst tensors first."""

from __future__ import annotations

import json


def _build(run, family, out, *extra):
    return run(
        "build", "--base", family.pre, "--finetuned", family.science, "--name", "science",
        "--version", "1.0.0", "-o", out, *extra,
    )  # fmt: skip


def test_lossy_build_and_info_report_the_worst_tensors_first(run, family_bf16, tmp_path):
    skill = tmp_path / "s.tvskill"
    res = _build(run, family_bf16, skill, "--codec", "sparse", "--density", "0.3", "-P", "values=int8")
    assert res.exit_code == 0, res.output
    assert "storage      lossy: max rel error" in res.stdout and "sparse ×" in res.stdout
    assert "rel error" in res.stdout and "more tensors" in res.stdout
    manifest = json.loads(run("info", skill, "--format", "json").stdout)
    assert manifest["source"]["codec"] == "sparse(density=0.3, values=int8)"
    errors = {n: t["rel_error"] for n, t in manifest["tensors"].items()}
    assert all(0 < e < 1 for e in errors.values())
    res = run("info", skill, "--tensors", "all")
    listed = [line.split()[0] for line in res.stdout.splitlines() if line.split() and line.split()[0] in errors]
    assert listed == sorted(errors, key=lambda n: -errors[n])
    assert "lossy: max rel error" in res.stdout


def test_exact_build_says_lossless(run, family, tmp_path):
    skill = tmp_path / "s.tvskill"
    res = _build(run, family, skill)
    assert res.exit_code == 0, res.output
    assert "storage      lossless (exact ×" in res.stdout
    assert "rel error" not in res.stdout
    assert "lossless (exact ×" in run("info", skill, "--tensors", "0").stdout


def test_bad_codec_parameters_exit_2_with_one_sentence(run, family, tmp_path):
    res = _build(run, family, tmp_path / "s.tvskill", "--codec", "exact", "--density", "0.1")
    assert res.exit_code == 2
    assert "codec `exact` has no parameter `density`; it takes no parameters." in res.output
    res = _build(run, family, tmp_path / "s.tvskill", "--codec", "sparse", "-P", "density")
    assert res.exit_code == 2 and "codec parameter `density` is not KEY=VALUE." in res.output
    res = _build(run, family, tmp_path / "s.tvskill", "--codec", "lzma")
    assert res.exit_code == 2 and "unknown codec `lzma`" in res.output
    assert not (tmp_path / "s.tvskill").exists()
