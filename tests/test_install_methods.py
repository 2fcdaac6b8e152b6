"""Installing with every merge method onto real tiny checkpoints equals the plain-torch reference."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from helpers import copy_model, tree_digest
from merge_reference import reference_merge
from tiny_models import read_state_dict

from tvreg._build.build import build_skill
from tvreg._env.lockfile import read_lock
from tvreg._env.operations import install
from tvreg.cli import main
from tvreg.errors import IncompatibleBase, MergeError

WEIGHTS = {"science": 0.3, "coding": 0.15}


def _skills(fam, tmp_path):
    return [
        build_skill(
            fam.pre,
            finetuned=getattr(fam, name),
            output=tmp_path / f"{name}.tvskill",
            name=name,
            version="1.0.0",
            dataset_size=int(w * 10000),
        ).path
        for name, w in WEIGHTS.items()
    ]


def expected_model(fam, method, params, *, kinds=None, ft_base=None):
    """The installed state dict per the whole-tensor reference (added vocabulary rows stay G's)."""
    g, p = read_state_dict(fam.general), read_state_dict(fam.pre)
    base = read_state_dict(ft_base) if ft_base is not None else p
    fts = [read_state_dict(getattr(fam, name)) for name in WEIGHTS]
    kw = {"lambda": "lam"}
    ref_params = {kw.get(k, k): v for k, v in params.items() if k != "base_weights"}
    out = {}
    for name, gt in g.items():
        taus = [ft[name].to(torch.float32) - base[name].to(torch.float32) for ft in fts]
        rows = taus[0].shape[0]
        head = reference_merge(
            method,
            gt[:rows],
            taus,
            list(WEIGHTS.values()),
            tensor=name,
            names=list(WEIGHTS),
            pre=p[name],
            kinds=kinds,
            **ref_params,
        ).to(gt.dtype)
        out[name] = torch.cat([head, gt[rows:]]) if rows < gt.shape[0] else head
    return out


CASES = [
    ("ties", {"density": 0.4, "lambda": 1.5}),
    ("dare_ties", {"drop_rate": 0.6, "seed": 3}),
    ("dare_linear", {"drop_rate": 0.5, "seed": 1, "normalize": True}),
    ("average", {}),
    ("linear", {}),
]


@pytest.mark.parametrize("fam_name", ["family", "family_bf16"])
@pytest.mark.parametrize(("method", "params"), CASES)
def test_install_with_each_method_equals_reference_and_is_locked(fam_name, method, params, request, tmp_path):
    fam = request.getfixturevalue(fam_name)
    skills = _skills(fam, tmp_path)
    model = copy_model(fam.general, tmp_path / "mymodel")
    given = dict(params)
    if method in ("average", "linear"):
        given["base_weights"] = str(fam.pre)
    install(
        skills, into=model, base=fam.pre, general_size=10000, method=method, method_params=given, device="cpu"
    )
    expected = expected_model(fam, method, params)
    got = read_state_dict(model)
    assert set(got) == set(expected)
    for name, t in expected.items():
        assert torch.equal(got[name], t), name
    lock = read_lock(model)
    assert lock.method == method
    for key, value in given.items():
        assert lock.method_params[key] == (str(fam.pre.resolve()) if key == "base_weights" else value)
    before = tree_digest(model)
    install([], into=model)  # recomputed from the lock alone: same method, same bits
    assert tree_digest(model) == before


def test_wise_ft_installs_a_delta_from_the_general_model(family, tmp_path):
    delta = build_skill(
        general=family.general,
        finetuned=family.science,  # stands in for a continued fine-tune of G
        output=tmp_path / "cft.tvskill",
        name="cft",
        version="1.0.0",
    ).path
    model = copy_model(family.general, tmp_path / "mymodel")
    install([delta], into=model, base=family.pre, method="wise_ft", weights={"cft": 0.25})
    g, cft = read_state_dict(family.general), read_state_dict(family.science)
    got = read_state_dict(model)
    w = float(torch.tensor(0.25, dtype=torch.float32))
    for name, gt in g.items():
        expect = (gt.to(torch.float32) + (cft[name].to(torch.float32) - gt.to(torch.float32)) * w).to(
            gt.dtype
        )
        assert torch.equal(got[name], expect), name
    with pytest.raises(
        MergeError, match="method `linear` cannot install skill `cft@1.0.0`, which is a delta"
    ):
        install([], into=model, method="linear", method_params={"base_weights": str(family.pre)})


def test_method_refusals_leave_the_model_unchanged(family, tmp_path):
    skills = _skills(family, tmp_path)
    model = copy_model(family.general, tmp_path / "mymodel")
    install(skills[:1], into=model, base=family.pre, general_size=10000)
    before = tree_digest(model)
    with pytest.raises(MergeError, match="method `linear` needs θ_pre's weights: pass `--base-weights PATH`"):
        install(skills, into=model, method="linear")
    with pytest.raises(IncompatibleBase, match="is not this model's base"):
        install(skills, into=model, method="average", method_params={"base_weights": str(family.science)})
    with pytest.raises(MergeError, match="method `wise_ft` cannot install skill `science@1.0.0`"):
        install(skills, into=model, method="wise_ft")
    with pytest.raises(MergeError, match="does not take `--drop-rate`"):
        install(skills, into=model, method="ties", method_params={"drop_rate": 0.5})
    if not torch.cuda.is_available():
        with pytest.raises(MergeError, match="`--device cuda` was asked for"):
            install(skills, into=model, device="cuda")
    assert tree_digest(model) == before


def test_cli_install_with_method_flags(family, tmp_path):
    skills = _skills(family, tmp_path)
    model = copy_model(family.general, tmp_path / "mymodel")
    res = CliRunner().invoke(
        main,
        [
            "install",
            *map(str, skills),
            "--into",
            str(model),
            "--base",
            str(family.pre),
            "--general-size",
            "10000",
            "--method",
            "dare_ties",
            "--drop-rate",
            "0.5",
            "--seed",
            "9",
            "--lambda",
            "2",
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    lock = json.loads((model / "tvreg.lock").read_text())
    assert lock["method"] == "dare_ties"
    assert lock["method_params"] == {"drop_rate": 0.5, "seed": 9, "lambda": 2.0, "normalize": False}
    res = CliRunner().invoke(main, ["install", "--into", str(model), "--method", "linear"])
    assert res.exit_code == 1
    assert "error: method `linear` needs θ_pre's weights: pass `--base-weights PATH`" in res.output


@pytest.mark.parametrize("codecs", [("int8", "sparse"), ("bf16", "lowrank"), ("int4", "sign")])
def test_install_reads_lossy_stored_forms_like_their_dense_decode(codecs, family, tmp_path):
    """Skills stored as int8/sparse/bf16/low-rank/int4/sign merge as their decoded τ would (ties: per-tensor trim)."""
    from tvreg._format.artifact import Artifact

    paths = [
        build_skill(
            family.pre,
            finetuned=getattr(family, name),
            output=tmp_path / f"{name}.tvskill",
            name=name,
            version="1.0.0",
            dataset_size=int(w * 10000),
            codec=codec,
        ).path
        for (name, w), codec in zip(WEIGHTS.items(), codecs, strict=True)
    ]
    model = copy_model(family.general, tmp_path / "mymodel")
    params = {"density": 0.3, "lambda": 1.1}
    install(paths, into=model, base=family.pre, general_size=10000, method="ties", method_params=params)
    g = read_state_dict(family.general)
    got = read_state_dict(model)
    arts = [Artifact(p) for p in paths]
    try:
        for name, gt in g.items():
            taus = [a.decode_form(name).to_dense() for a in arts]
            ref = reference_merge("ties", gt, taus, list(WEIGHTS.values()), density=0.3, lam=1.1)
            torch.testing.assert_close(got[name], ref.to(gt.dtype), rtol=0, atol=1e-6)  # low-rank: matmul order
    finally:
        for a in arts:
            a.close()


def test_average_of_deltas_from_general_needs_no_base_weights(family, tmp_path):
    deltas = [
        build_skill(
            general=family.general, finetuned=getattr(family, n), output=tmp_path / f"{n}.tvskill", name=n,
            version="1.0.0",
        ).path
        for n in WEIGHTS
    ]  # fmt: skip
    model = copy_model(family.general, tmp_path / "mymodel")
    install(deltas, into=model, base=family.pre, method="average", weights=WEIGHTS)
    g, got = read_state_dict(family.general), read_state_dict(model)
    fts = [read_state_dict(getattr(family, n)) for n in WEIGHTS]
    for name, gt in g.items():
        taus = [ft[name].float() - gt.float() for ft in fts]
        expect = reference_merge("average", gt, taus, [1, 1], kinds=["delta_from_general"] * 2).to(gt.dtype)
        assert torch.equal(got[name], expect), name
    with pytest.raises(MergeError, match="method `average` needs θ_pre's weights"):
        install(_skills(family, tmp_path), into=model, method="average", weights=WEIGHTS)


@pytest.mark.parametrize("method", ["linear"])
def test_a_kill_mid_write_leaves_the_old_model_for_every_method(method, family, tmp_path):
    import signal
    import subprocess
    import sys

    from helpers import subprocess_env

    skills = _skills(family, tmp_path)
    model = copy_model(family.general, tmp_path / "mymodel")
    install(skills[:1], into=model, base=family.pre, general_size=10000)
    before = tree_digest(model)
    cmd = [sys.executable, "-m", "tvreg.cli", "install", *map(str, skills), "--into", str(model),
           "--method", method, "--base-weights" if method == "linear" else "--seed",
           str(family.pre) if method == "linear" else "4"]  # fmt: skip
    proc = subprocess.run(cmd, env={**subprocess_env(), "TVREG_FAULT": "install:write"}, capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert tree_digest(model) == before
    install(skills, into=model, method=method, method_params={"seed": 4} if method == "dare_ties" else
            {"base_weights": str(family.pre)})  # fmt: skip
    assert read_lock(model).method == method and len(read_lock(model).skills) == 2
