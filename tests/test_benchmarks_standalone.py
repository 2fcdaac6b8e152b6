"""Benchmarks run without the test suite: no import from ``tests/``, no pytest.

``benchmarks/load.py`` once loaded ``tests/registry/conftest.py`` by path for its
PostgreSQL cluster, so a benchmark needed pytest and broke whenever the fixtures
changed; the cluster now lives in ``registry_server.pgcluster``, which both use.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted((ROOT / "benchmarks").glob("*.py"))


def _test_suite_references(path: Path) -> list[str]:
    """Imports of ``tests``/``conftest``/``pytest`` and code that loads a file under ``tests/``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        blocked = {"tests", "conftest", "pytest"}
        found += [f"line {node.lineno}: import {n}" for n in names if n.split(".")[0] in blocked]
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if "conftest" in node.value or node.value.startswith("tests/"):
                found.append(f"line {node.lineno}: {node.value!r}")
    return found


def test_benchmarks_exist() -> None:
    assert len(BENCHMARKS) > 5


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_does_not_reach_into_tests(path: Path) -> None:
    assert _test_suite_references(path) == []


def test_load_benchmark_imports_without_pytest_or_tests() -> None:
    """Import ``benchmarks/load.py`` and its cluster with ``pytest`` and ``tests`` unimportable."""
    probe = f"""
import importlib.abc, importlib.util, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pytest", "_pytest", "tests", "conftest"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
spec = importlib.util.spec_from_file_location("bench_load", {str(ROOT / "benchmarks/load.py")!r})
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
from registry_server.pgcluster import PostgresCluster, find_pg_bin
print("ok", PostgresCluster.__module__)
"""
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "ok registry_server.pgcluster" in res.stdout
    source = (ROOT / "benchmarks/load.py").read_text()
    assert "registry_server.pgcluster" in source


def test_install_breakdown_times_every_stage_it_names(family, tmp_path) -> None:
    """``benchmarks/install.py --breakdown`` wraps the library's install stages by name; when the
    library moves a function (as the private-package split did), the wrap must follow it, not
    silently time nothing. Here every named stage is found and the time-consuming ones are hit."""
    import json

    from helpers import copy_model, subprocess_env

    from tvreg._build.build import build_skill
    from tvreg._env.environment import init_environment

    skill = build_skill(family.pre, finetuned=family.science, output=tmp_path / "s.tvskill", name="science",
                        version="1.0.0", dataset_size=10).path  # fmt: skip
    model = copy_model(family.general, tmp_path / "mymodel")
    init_environment(model, base=family.pre, general_size=100)
    out = tmp_path / "breakdown.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "install.py"), "--breakdown-install", str(model), str(out), str(skill)],
        env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["not_patched"] == []
    stages = report["stages"]
    for label in ("stage other files", "swap directories", "[worker] merge_tensor (fp32 merge + round, CPU)",
                  "[worker] sha256 of merged tensor", "[main] waiting for workers (next(stream))",
                  "[worker]   merge: exact frames added into the sum (add_into)"):  # fmt: skip
        assert stages.get(label, [0, 0, 0])[2] >= 1, (label, sorted(stages))


def test_build_benchmark_reports_the_copy_baseline_and_the_ratio(tmp_path) -> None:
    """``benchmarks/build.py`` on the smallest model it makes: a copy row, a ``tvreg build`` row, the
    ratio of the two, and a breakdown whose every named stage is found in the library and hit."""
    import json

    from helpers import subprocess_env

    out = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "build.py"), "--params", "1e6", "--repeat", "1", "--breakdown",
         "--tau", "finetune", "--workdir", str(tmp_path / "work"), "--json", str(out)],
        env=subprocess_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    result = json.loads(out.read_text())
    copy, build = result["steps"]["copy"], result["steps"]["build"]
    assert copy["wall_s"] > 0 and copy["cpu_s"] >= 0 and build["cpu_s"] > 0
    assert build["ratio_to_copy"] == pytest.approx(build["wall_s"] / copy["wall_s"])
    assert f"ratio to copy (target ≤ 3): {build['ratio_to_copy']:.2f}" in done.stdout
    assert result["breakdown"]["not_patched"] == []
    stages = result["breakdown"]["stages"]
    for label in ("fingerprint of θ_pre (hash every tensor)", "[worker] subtract (compiled bf16 delta)",
                  "[worker] sketch (sketch_tensor)", "[chunk]    encode: zstd compress (per frame)",
                  "[chunk]    encode: bitmap + planes (compiled, per chunk)",
                  "[main] ArtifactWriter.finish (header, copy body, fsync)"):  # fmt: skip
        assert stages.get(label, [0, 0, 0])[2] >= 1, (label, sorted(stages))
    assert not list((tmp_path / "work").glob("*.tvskill")), "the artifacts are removed without --keep"


def test_zstd_profile_benchmark_compares_both_profiles_on_the_codec_s_own_segments() -> None:
    """``benchmarks/zstd_profile.py`` on small synthetic τ: a row per profile and the ratio line, per case."""
    from helpers import subprocess_env

    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "zstd_profile.py"), "--numel", "2e6", "--repeat", "1"],
        env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    for case in ("dense", "finetune"):
        rows = [line.split() for line in lines if line.startswith(case)]
        assert [r[2] if r[2] != "level" else "level 1" for r in rows] == ["level 1", "planes"], rows
    ratios = [line for line in lines if "planes / level 1:" in line]
    assert len(ratios) == 2 and all(float(r.split()[-3]) < 1.0 for r in ratios), ratios  # smaller on both
