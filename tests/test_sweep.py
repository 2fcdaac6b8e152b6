"""Evaluation hooks and `tvreg sweep`: each ω is a real install, scored by the user's hook; the best can be locked."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from helpers import copy_model, reference_install, tree_digest
from tiny_models import read_state_dict

from tvreg._build.build import build_skill
from tvreg._env.environment import init_environment
from tvreg._env.evaluate import load_hook, run_hook
from tvreg._env.lockfile import read_lock
from tvreg._env.sweep import parse_weight_grid, sweep
from tvreg.cli import main
from tvreg.errors import EvaluationError, WeightError

# A hook whose best ω is known: minus the distance of the model's weights to G + 0.6 τ.
HOOK = """
import torch
from tiny_models import read_state_dict

TARGET = {target!r}

def distance(model_dir):
    got, want = read_state_dict(model_dir), torch.load(TARGET)
    err = sum(float((got[n].float() - want[n].float()).pow(2).sum()) for n in want)
    return {{"closeness": -err, "calls": 1}}
"""


@pytest.fixture
def env(family, tmp_path):
    skill = build_skill(
        family.pre,
        finetuned=family.science,
        output=tmp_path / "science.tvskill",
        name="science",
        version="1.0.0",
        dataset_size=3000,
    ).path
    model = copy_model(family.general, tmp_path / "models" / "mymodel")
    init_environment(model, base=family.pre, general_size=10000)
    target = tmp_path / "target.pt"
    torch.save(reference_install(family.general, family.pre, [(family.science, 0.6)]), target)
    hook_file = tmp_path / "hooks" / "closeness.py"
    hook_file.parent.mkdir()
    hook_file.write_text(HOOK.format(target=str(target)))
    return skill, model, hook_file


def test_weight_grid_includes_both_ends_and_accepts_lists():
    assert parse_weight_grid("0.2:1.0:0.2") == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert parse_weight_grid("0:1:0.5") == [0.0, 0.5, 1.0]
    assert parse_weight_grid("1, 0.1,0.1") == [0.1, 1.0]
    for bad in ("0.2:1.0", "1:0:0.1", "0:1:0", "a,b", "", "0:1:nan", "0:1000:0.1"):
        with pytest.raises(WeightError):
            parse_weight_grid(bad)


def test_hook_specs_fail_with_one_clear_sentence(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "x = 3\ndef boom(d):\n    raise RuntimeError('no GPU')\ndef weird(d):\n    return [1]\n"
        "def nan(d):\n    return {'m': float('nan')}\ndef text(d):\n    return {'m': 'high'}\n"
        "def empty(d):\n    return {}\n"
    )
    cases = {
        "no_colon": "is not an evaluation hook",
        "no_such_module_xyz:fn": "no module named `no_such_module_xyz`",
        f"{tmp_path}/missing.py:fn": "does not exist",
        f"{bad}:nothere": "has no attribute `nothere`",
        f"{bad}:x": "is a int, not a function",
    }
    for spec, words in cases.items():
        with pytest.raises(EvaluationError) as exc:
            load_hook(spec)
        assert words in exc.value.message and spec in exc.value.message
    for fn, words in {
        "boom": "failed on",
        "weird": "must return a non-empty dict",
        "nan": "returned nan for metric `m`",
        "text": "'high' for metric `m`, not a number",
        "empty": "must return a non-empty dict",
    }.items():
        with pytest.raises(EvaluationError, match=words):
            run_hook(load_hook(f"{bad}:{fn}"), tmp_path)


def test_module_hooks_import_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "myevals").mkdir()
    (tmp_path / "myevals" / "__init__.py").write_text("")
    (tmp_path / "myevals" / "score.py").write_text(
        "def fn(d):\n    return {'size': len(str(d)), 'ok': True}\n"
    )
    monkeypatch.chdir(tmp_path)
    assert run_hook(load_hook("myevals.score:fn"), "abc") == {"size": 3.0, "ok": 1.0}


def test_sweep_installs_each_weight_and_leaves_the_model_alone(env, family):
    skill, model, hook_file = env
    before = tree_digest(model)
    seen = []
    res = sweep(
        skill,
        into=model,
        weights=[0.2, 0.6, 1.0],
        evaluate=load_hook(f"{hook_file}:distance"),
        metric="closeness",
        on_point=seen.append,
    )
    assert [p.weight for p in res.points] == [0.2, 0.3, 0.6, 1.0]  # 0.3 = |D|/|G| added
    assert [p.is_default for p in res.points] == [False, True, False, False]
    assert res.default_weight == pytest.approx(0.3)
    assert seen == list(res.points)
    assert res.best.weight == 0.6 and res.best.scores["closeness"] == 0.0
    assert all(p.scores["closeness"] < 0 for p in res.points if p.weight != 0.6)
    assert res.locked is None
    assert tree_digest(model) == before
    leftovers = [
        p.name for p in model.parent.iterdir() if p.name != "mymodel" and not p.name.endswith(".lock")
    ]
    assert leftovers == []


def test_lock_best_installs_the_winner_bit_for_bit(env, family):
    skill, model, hook_file = env
    res = sweep(
        skill,
        into=model,
        weights=parse_weight_grid("0.2:1.0:0.4"),
        evaluate=load_hook(f"{hook_file}:distance"),
        metric="closeness",
        lock_best=True,
        include_default=False,
    )
    assert [p.weight for p in res.points] == [0.2, 0.6, 1.0]
    assert res.locked is not None
    [locked] = read_lock(model).skills
    assert (locked.name, locked.weight, locked.weight_source) == ("science", 0.6, "user")
    expected = reference_install(family.general, family.pre, [(family.science, 0.6)])
    got = read_state_dict(model)
    assert all(torch.equal(got[n], t) for n, t in expected.items())


def test_lock_best_needs_a_metric_when_the_hook_returns_several(env):
    skill, model, hook_file = env
    before = tree_digest(model)
    with pytest.raises(EvaluationError, match="returned 2 metrics"):
        sweep(skill, into=model, weights=[0.5], evaluate=load_hook(f"{hook_file}:distance"), lock_best=True)
    with pytest.raises(EvaluationError, match="no metric `accuracy`"):
        sweep(
            skill, into=model, weights=[0.5], evaluate=load_hook(f"{hook_file}:distance"), metric="accuracy"
        )
    assert tree_digest(model) == before


def test_cli_prints_the_table_and_locks_the_best(env):
    skill, model, hook_file = env
    runner = CliRunner()
    args = [
        "sweep",
        str(skill),
        "--into",
        str(model),
        "--weights",
        "0.2:1.0:0.4",
        "--eval",
        f"{hook_file}:distance",
    ]
    shown = runner.invoke(main, [*args, "--metric", "closeness", "--lock-best"])
    assert shown.exit_code == 0, shown.output
    assert "|D|/|G|" in shown.output and "best" in shown.output
    assert "Best ω on `closeness`: 0.6" in shown.output
    assert read_lock(model).skills[0].weight == 0.6
    as_json = runner.invoke(main, [*args, "--no-default", "--format", "json"])
    data = json.loads(as_json.stdout)
    assert [p["weight"] for p in data["points"]] == [0.2, 0.6, 1.0]
    assert data["locked"] is False and data["best_weight"] is None
    broken = runner.invoke(main, [*args[:-1], "nomodule_here:fn"])
    assert broken.exit_code == 1
    assert "error: evaluation hook `nomodule_here:fn`: no module named" in broken.output
