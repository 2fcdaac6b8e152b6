"""The environment policy file (``tvreg.toml``) and the install gate, without a registry.

Policy parsing is strict: each bad file below is refused naming the file and the key,
with a hint. The gate evaluates the *staged* model: a failing gate, or a kill -9 while
it runs, leaves the old model byte for byte.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import copy_model, subprocess_env, tree_digest

from tvreg._build.build import build_skill
from tvreg._env.lockfile import read_lock
from tvreg._env.operations import install
from tvreg._env.policy import Constraint, load_policy, make_gate, parse_constraint
from tvreg.cli import main
from tvreg.errors import GateFailed, PolicyError

HOOK = """
from tiny_models import read_state_dict

def score(model_dir):
    sd = read_state_dict(model_dir)
    return {"checksum": sum(float(t.double().sum()) for t in sd.values()), "tensors": len(sd)}
"""


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _skill(fam, tmp_path, which, version="1.0.0", size=3000):
    return build_skill(
        fam.pre, finetuned=getattr(fam, which), output=tmp_path / f"{which}-{version}.tvskill",
        name=which, version=version, dataset_size=size,
    ).path  # fmt: skip


@pytest.fixture
def model(family, tmp_path):
    """mymodel with `science` installed from a file."""
    m = copy_model(family.general, tmp_path / "mymodel")
    install([_skill(family, tmp_path, "science")], into=m, base=family.pre, general_size=10000)
    return m


@pytest.fixture
def hook(tmp_path):
    path = tmp_path / "hooks" / "gate.py"
    path.parent.mkdir()
    path.write_text(HOOK)
    return path


# One row per mistake: the file's text, and what the error must say (the key, then the hint).
BAD_POLICIES = [
    ("[policy]\nrequire-signatures = true\n", "unknown key `policy.require-signatures`", "did you mean `require-signature`?"),
    ("[policy]\nrequire-signature = \"yes\"\n", "`policy.require-signature` must be true or false", "require-signature = true"),
    ("[policy]\ntrusted-keys = \"nlp\"\n", "`policy.trusted-keys` must be a list of strings", "trusted-keys = ["),
    ("[policy]\ntrusted-keys = [\"sha256:abc\"]\n", "neither a key id nor a team or user name", "64 hex digits"),
    ("[policy]\nalways = [\"safety>=2\"]\n", "must name a registry skill in full", "namespace/skill>=VERSION"),
    ("[policy]\nalways = [\"nlp/safety>=two\"]\n", "`policy.always` has `nlp/safety>=two`, which is not a requirement", "nlp/safety>=2"),
    ("[policy.attested]\n\"nlp/safety\" = { refusal_rate = \"at least 0.8\" }\n", "`policy.attested.\"nlp/safety\".refusal_rate`: `at least 0.8` is not a metric constraint", "\">=0.8\""),
    ("[policy.attested]\n\"nlp/safety\" = { refusal_rate = 0.8 }\n", "must be a string like \">=0.8\"", "write it quoted"),
    ("[policy.attested]\nsafety = { refusal_rate = \">=0.8\" }\n", "`policy.attested.safety` is not a registry skill name", "name the skill in full"),
    ("[policy.attested]\n\"nlp/safety\" = {}\n", "must be a non-empty table", "refusal_rate"),
    ("[polcy]\nrequire-signature = true\n", "unknown key `tvreg.toml.polcy`", "did you mean `policy`?"),
    ("[policy\n", "is not valid TOML", "Trust and policy"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message", "hint"), BAD_POLICIES)
def test_a_bad_policy_file_is_refused_naming_the_file_and_the_key(tmp_path, text, message, hint):
    (tmp_path / "tvreg.toml").write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path)
    assert str(tmp_path / "tvreg.toml") in info.value.message
    assert message in info.value.message
    assert any(hint in h for h in info.value.hints), info.value.hints


def test_a_good_policy_parses_both_requirement_spellings(tmp_path):
    (tmp_path / "tvreg.toml").write_text(
        '[policy]\nrequire-signature = true\ntrusted-keys = ["nlp-safety", "sha256:' + "a" * 64 + '"]\n'
        'always = ["nlp/safety>=2", "nlp/style@^1.2"]\n'
        '[policy.attested]\n"nlp/safety" = { refusal_rate = ">=0.8", toxicity = "< 0.1" }\n'
    )
    policy = load_policy(tmp_path)
    assert policy.require_signature and policy.trusted_keys[0] == "nlp-safety"
    assert [(r.name, r.spec) for r in policy.always] == [("nlp/safety", ">=2"), ("nlp/style", "^1.2")]
    assert policy.attested["nlp/safety"] == (
        Constraint("refusal_rate", ">=", 0.8),
        Constraint("toxicity", "<", 0.1),
    )
    assert load_policy(tmp_path / "nowhere") is None


def test_install_refuses_with_a_bad_policy_before_touching_the_model(model, family, tmp_path):
    (model / "tvreg.toml").write_text("[policy]\nrequire-signature = 1\n")
    before = tree_digest(model)
    res = cli("install", _skill(family, tmp_path, "coding"), "--into", model)
    assert res.exit_code == 2
    assert res.stderr.splitlines() == [
        f"error: `{model / 'tvreg.toml'}`: `policy.require-signature` must be true or false, not 1.",
        "hint: write `require-signature = true`",
    ]
    assert tree_digest(model) == before


def test_a_file_skill_installs_with_a_note_unless_signatures_are_required(model, family, tmp_path):
    coding = _skill(family, tmp_path, "coding")
    (model / "tvreg.toml").write_text("[policy]\nrequire-signature = true\n")
    before = tree_digest(model)
    res = cli("install", coding, "--into", model)
    assert res.exit_code == 1
    assert "the policy of mymodel refuses this install" in res.stderr
    assert "`science` 1.0.0 is installed from a file, which carries no signature" in res.stderr
    assert tree_digest(model) == before
    (model / "tvreg.toml").write_text("[policy]\nrequire-signature = false\n")
    res = cli("install", coding, "--into", model)
    assert res.exit_code == 0, res.output
    assert "note: `coding` 1.0.0 is installed from a file, unsigned." in res.stderr
    assert [(s.name, s.signed_by) for s in read_lock(model).skills] == [("science", None), ("coding", None)]


@pytest.mark.parametrize(
    ("text", "hint"),
    [("checksum", "refusal_rate>=0.8"), ("checksum=>1", "operators"), ("1>=x", "refusal_rate>=0.8")],
)
def test_a_bad_require_is_refused(text, hint):
    with pytest.raises(PolicyError) as info:
        parse_constraint(text)
    assert f"`{text}` is not a metric constraint" in info.value.message
    assert any(hint in h for h in info.value.hints)


def test_a_gate_needs_a_requirement_and_require_needs_a_gate(model, hook):
    with pytest.raises(PolicyError, match="needs at least one `--require"):
        make_gate(f"{hook}:score", [])
    res = cli("install", "x.tvskill", "--into", model, "--require", "checksum>=0")
    assert res.exit_code == 2 and "--require needs --gate" in res.stderr


def test_a_passing_gate_installs_and_reports_what_it_measured(model, family, tmp_path, hook):
    res = cli(
        "install", _skill(family, tmp_path, "coding"), "--into", model,
        "--gate", f"{hook}:score", "--require", "tensors>=1", "--require", "checksum>-1e30",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert f"note: gate `{hook}:score` passed: checksum=" in res.stderr
    assert [s.name for s in read_lock(model).skills] == ["science", "coding"]


def test_a_failing_gate_swaps_nothing_and_prints_the_measured_metrics(model, family, tmp_path, hook):
    before = tree_digest(model)
    res = cli(
        "install", _skill(family, tmp_path, "coding"), "--into", model,
        "--gate", f"{hook}:score", "--require", "tensors>=1", "--require", "checksum>=1e30",
    )  # fmt: skip
    assert res.exit_code == 1
    error = next(line for line in res.stderr.splitlines() if line.startswith("error:"))
    assert error.startswith(f"error: the gate `{hook}:score` failed: `checksum>=1e+30` not met (measured checksum=")
    assert "tensors=" in res.stderr and "nothing was installed" in res.stderr
    assert tree_digest(model) == before
    assert not list(model.parent.glob(".mymodel.tvreg-*"))  # the staged tree is gone too
    with pytest.raises(GateFailed) as info:
        install(
            [_skill(family, tmp_path, "coding")], into=model,
            gate=make_gate(f"{hook}:score", ["nothing>=0"]),
        )  # fmt: skip
    assert info.value.failed == ["nothing>=0"] and set(info.value.metrics) == {"checksum", "tensors"}
    assert "the hook returned no metric `nothing`" in info.value.hints
    assert tree_digest(model) == before


def test_a_kill_during_the_gate_leaves_the_old_model_and_a_retry_succeeds(model, family, tmp_path, hook):
    coding = _skill(family, tmp_path, "coding")
    before = tree_digest(model)
    proc = subprocess.run(
        [sys.executable, "-m", "tvreg.cli", "install", str(coding), "--into", str(model),
         "--gate", f"{hook}:score", "--require", "tensors>=1"],
        env={**subprocess_env(), "TVREG_FAULT": "install:gate",
             "PYTHONPATH": subprocess_env()["PYTHONPATH"] + ":" + str(Path(__file__).parents[1] / "examples")},
        capture_output=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert tree_digest(model) == before
    assert list(model.parent.glob(".mymodel.tvreg-*.staging"))  # killed mid-gate: its staged tree is left
    res = cli("install", coding, "--into", model, "--gate", f"{hook}:score", "--require", "tensors>=1")
    assert res.exit_code == 0, res.output
    assert not list(model.parent.glob(".mymodel.tvreg-*.staging"))


def test_a_failing_gate_on_sync_keeps_the_old_weights_and_lock_byte_identical(model, family, tmp_path, hook):
    assert cli("lock", _skill(family, tmp_path, "coding"), "--into", model).exit_code == 0  # lock moves, weights not
    before = tree_digest(model)
    res = cli("sync", "--into", model, "--gate", f"{hook}:score", "--require", "checksum>=1e30")
    assert res.exit_code == 1
    error = next(line for line in res.stderr.splitlines() if line.startswith("error:"))
    assert error.startswith(f"error: the gate `{hook}:score` failed: `checksum>=1e+30` not met (measured checksum=")
    assert error.endswith("nothing was synced.") and "tensors=" in error
    assert tree_digest(model) == before
    assert not list(model.parent.glob(".mymodel.tvreg-*"))
    assert cli("sync", "--into", model, "--require", "tensors>=1").exit_code == 2  # --require without --gate
    res = cli("sync", "--into", model, "--gate", f"{hook}:score", "--require", "tensors>=1")
    assert res.exit_code == 0, res.output
    assert f"note: gate `{hook}:score` passed" in res.stderr
    assert tree_digest(model) != before
