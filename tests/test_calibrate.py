"""Calibrated `auto` (issue 23): the coding is chosen by the share of the fine-tune's gain it keeps on held-out data.

The skill is the tiny family's `science` fine-tune; the calibration texts are held-out science
sentences in the style of its training set (not among its training texts), one per line.
Retention is recomputed here with a loss written independently of tvreg._build.calibrate: the
model's own tokenizer, a plain forward and a hand-written token-level cross entropy.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from tvreg._build import calibrate
from tvreg._build.build import build_skill
from tvreg._format.artifact import Artifact
from tvreg._format.manifest import Manifest
from tvreg.errors import EvaluationError, TvregError

HELDOUT = [
    "Water freezes at 0 degrees Celsius at sea level.",
    "The Sun is a star made mostly of hydrogen.",
    "Electrons carry a negative electric charge.",
    "Plants take in CO2 and give out oxygen.",
    "Sound needs a medium such as air to travel.",
    "The Earth turns on its axis once a day.",
    "Cells divide to make new cells.",
    "Ice floats because it is less dense than water.",
    "Gravity pulls objects toward the Earth.",
    "Light bends when it passes into water.",
    "An atom's nucleus holds protons and neutrons.",
    "Energy cannot be created or destroyed.",
]


@pytest.fixture
def heldout(tmp_path) -> Path:
    path = tmp_path / "heldout.txt"
    path.write_text("\n".join(HELDOUT[:6]) + "\n\n" + "\n".join(HELDOUT[6:]) + "\n", encoding="utf-8")
    return path


def _nll(model_dir: Path, texts: list[str], taus: dict[str, torch.Tensor] | None) -> list[tuple[float, int]]:
    """Each text's next-token NLL summed over its tokens, and its token count, for θ + τ, computed without tvreg."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    params = dict(model.named_parameters())
    out = []
    with torch.no_grad():
        for name, tau in (taus or {}).items():
            params[name].add_(tau)
        for text in texts:
            ids = torch.tensor([tok(text)["input_ids"]])
            logits = model(input_ids=ids).logits[0, :-1].double()
            nll = -torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None]).sum()
            out.append((float(nll), ids.shape[1] - 1))
    return out


def _loss(model_dir: Path, texts: list[str], taus: dict[str, torch.Tensor] | None) -> float:
    """Token-weighted mean NLL of θ + τ on ``texts``, computed without tvreg."""
    per_text = _nll(model_dir, texts, taus)
    return sum(n for n, _ in per_text) / sum(c for _, c in per_text)


def _bootstrap_bound(pre: list, ft: list, coded: list) -> float:
    """docs/format.md's margin, written out: 1000 paired resamples of text indices (torch seed 0), 5th percentile."""
    n = len(pre)
    idx = torch.randint(0, n, (1000, n), generator=torch.Generator().manual_seed(0)).numpy()
    kept = np.array([p[0] - c[0] for p, c in zip(pre, coded, strict=True)])[idx].sum(1)
    gained = np.array([p[0] - f[0] for p, f in zip(pre, ft, strict=True)])[idx].sum(1)
    return float(np.quantile(kept / gained, 0.05, method="lower"))


def _taus(path: Path) -> dict[str, torch.Tensor]:
    with Artifact(path) as art:
        return {name: art.decode(name) for name in art.manifest.tensors}


def _build(family, out: Path, **kw):
    return build_skill(
        family.pre, finetuned=family.science, output=out, name="science", version="1.0.0", codec="auto", **kw
    )


def test_a_target_of_one_keeps_tau_exact_after_two_evaluations(family, heldout, tmp_path):
    res = _build(family, tmp_path / "s.tvskill", calibration=heldout, min_retention=1.0)
    m = res.manifest
    assert {t.codec for t in m.tensors.values()} == {"exact"} and not m.lossy
    cal = m.calibration
    assert cal["retention"] == 1.0 and cal["evaluations"] == 2 and cal["explored"] == []
    assert cal["texts"] == len(HELDOUT) and cal["chosen"] == "exact"
    assert cal["plan"] is None and cal["plan_reason"] == "a target of 100% keeps τ exact"
    assert cal["retention_bound"] == 1.0  # τ̂ = τ keeps every text's gain
    assert cal["loss_finetuned"] < cal["loss_pre"]  # the skill helps on its domain, so retention is defined


def test_a_lower_target_picks_a_smaller_lossy_coding_that_meets_it(family, heldout, tmp_path, monkeypatch):
    # The built-in settings without the fixed ranks: a list that lets the per-group search move some of
    # the tiny model's layers, so what it checks below does not depend on later additions to the list.
    monkeypatch.setattr(calibrate, "CANDIDATES", [c for c in calibrate.CANDIDATES if "rank" not in c[1]])
    exact = build_skill(
        family.pre, finetuned=family.science, output=tmp_path / "e.tvskill", name="science", version="1.0.0"
    )
    target = 0.9
    res = _build(family, tmp_path / "s.tvskill", calibration=heldout, min_retention=target)
    m, cal = res.manifest, res.manifest.calibration
    assert m.lossy and res.stored_bytes < exact.stored_bytes
    assert m.source["codec"] == f"auto({cal['chosen']})"

    pre = _nll(family.pre, HELDOUT, None)
    ft = _nll(family.pre, HELDOUT, _taus(exact.path))
    coded = _nll(family.pre, HELDOUT, _taus(res.path))
    losses = [sum(n for n, _ in x) / sum(c for _, c in x) for x in (pre, ft, coded)]
    kept = (losses[0] - losses[2]) / (losses[0] - losses[1])
    assert kept >= target and _bootstrap_bound(pre, ft, coded) >= target
    assert kept == pytest.approx(cal["retention"], abs=1e-4)
    assert cal["retention_bound"] == pytest.approx(_bootstrap_bound(pre, ft, coded), abs=1e-4)
    assert (cal["loss_pre"], cal["loss_finetuned"], cal["loss_chosen"]) == pytest.approx(losses, abs=1e-4)
    # Every evaluation is one explored entry; the uniform search bisects each family of candidates
    # (sorted by size) on its own, ⌈log₂(n+1)⌉ at most for n settings, and the per-group search costs
    # one probe per group plus its bisection.
    plan = cal["plan"]
    uniform = [e for e in cal["explored"] if ";" not in e["codec"]]
    assert cal["evaluations"] == 2 + len(cal["explored"]) == 2 + len(uniform) + plan["evaluations"]
    sizes = Counter(calibrate.family(n, o) for n, o in calibrate.CANDIDATES).values()
    assert len(uniform) <= sum(math.ceil(math.log2(n + 1)) for n in sizes)
    assert plan["evaluations"] == plan["probes"] + plan["verifications"]
    assert plan["probes"] <= len(plan["groups"]) == 4  # lm_head, embed_tokens, layers 0 and 1 (norm: a vector)
    picked = next(e for e in uniform if e["codec"] == plan["setting"])
    assert all(e["retention"] < target or e["retention_bound"] < target for e in uniform if e["bytes"] < picked["bytes"])

    # The per-group plan is never larger than the uniform pick, and here it moves some layers.
    stored = sum(t.stored_bytes for t in m.tensors.values())
    budget = 2 + len(uniform)  # the same uniform search with no room left for the per-group one
    alone = _build(family, tmp_path / "u.tvskill", calibration=heldout, min_retention=target, max_evaluations=budget)
    assert alone.manifest.calibration["chosen"] == plan["setting"] and alone.manifest.calibration["plan"] is None
    assert alone.manifest.calibration["plan_reason"] == f"the budget of {budget} evaluations leaves no room for a per-group search"
    assert stored == next(e["bytes"] for e in cal["explored"] if e["codec"] == cal["chosen"])
    assert stored < sum(t.stored_bytes for t in alone.manifest.tensors.values()) == picked["bytes"]
    assert plan["moved"] == sum(g["smaller"] for g in plan["groups"]) >= 1
    assert cal["chosen"] == f"{plan['setting']}; {plan['smaller']} on {plan['moved']} of 4 groups"
    # The stored matrices are the plan: moved layers hold the smaller setting's coding, the others the
    # uniform pick's (the same bytes as a build with that one setting for every tensor).
    (setting,) = [(c, o) for c, o in calibrate.CANDIDATES if calibrate._Uniform(calibrate.make_codec(c, o), o).describe() == plan["smaller"]]  # fmt: skip
    uniform_small = build_skill(
        family.pre, finetuned=family.science, output=tmp_path / "small.tvskill", name="science", version="1.0.0",
        codec=setting[0], codec_options=setting[1],
    ).manifest  # fmt: skip
    moved = {g["group"] for g in plan["groups"] if g["smaller"]}
    told = 0
    for name, entry in m.tensors.items():
        if len(entry.shape) != 2:
            continue
        small, big = uniform_small.tensors[name].sha256, alone.manifest.tensors[name].sha256
        in_moved = any(name.startswith(g + ".") for g in moved)
        assert entry.sha256 == (small if in_moved else big), name
        told += small != big
    assert told  # the two settings code some matrices differently, so the check can tell


def test_a_hook_calibrates_like_the_text_file(family, heldout, tmp_path):
    hook = tmp_path / "myeval.py"
    hook.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_calibrate import HELDOUT, _loss\n"
        "def score(model_dir):\n"
        "    return {'loss': _loss(model_dir, HELDOUT, None)}\n",
        encoding="utf-8",
    )
    # Judged on the mean like the hook (a hook's one number has no margin).
    by_text = _build(family, tmp_path / "t.tvskill", calibration=heldout, min_retention=0.9, margin=False).manifest.calibration
    by_hook = _build(family, tmp_path / "h.tvskill", calibration=f"{hook}:score", min_retention=0.9).manifest.calibration
    assert by_hook["chosen"] == by_text["chosen"]
    assert by_hook["retention"] == pytest.approx(by_text["retention"], abs=1e-3)
    assert by_hook["texts"] is None and by_hook["data"] == f"{hook}:score" and by_hook["metric"] == "loss"
    assert by_hook["margin"] is None and by_hook["retention_bound"] is None
    assert by_hook["margin_reason"] == "a hook returns one score, which cannot be resampled: judged on the mean"


def test_the_figures_round_trip_through_the_manifest_and_info(run, family, heldout, tmp_path):
    out = tmp_path / "s.tvskill"
    res = run(
        "build", "--base", family.pre, "--finetuned", family.science, "--name", "science", "--version", "1.0.0",
        "--codec", "auto", "--calibration", heldout, "--min-retention", "0.9", "--max-evaluations", "30", "-o", out,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    with Artifact(out) as art:
        cal = art.manifest.calibration
        assert cal["max_evaluations"] == 30 and cal["evaluations"] <= 30
        assert Manifest.from_json(art.manifest.to_json(), where="x").calibration == cal
    assert cal["margin"] == {"method": "paired bootstrap", "resamples": 1000, "quantile": 0.05, "seed": 0}
    assert 0.9 <= cal["retention_bound"] <= cal["retention"] and cal["margin_reason"] is None
    line = (
        f"lossy, retention {100 * cal['retention']:.1f}% (≥ {100 * cal['retention_bound']:.1f}% at 95%) "
        f"on {len(HELDOUT)} held-out texts (target 90%"
    )
    assert line in res.stdout
    info = run("info", out)
    assert info.exit_code == 0 and line in info.stdout
    manifest = json.loads(run("info", out, "--format", "json").stdout)
    assert manifest["calibration"] == cal
    jsonschema = pytest.importorskip("jsonschema")
    from importlib import resources

    schema = json.loads(resources.files("tvreg").joinpath("schemas/manifest.schema.json").read_text("utf-8"))
    with Artifact(out) as art:
        jsonschema.Draft202012Validator(schema).validate(json.loads(art.manifest.to_json()))


SMALL, LARGE = ("lowrank", {"energy": 0.9, "fallback": "int8"}), ("lowrank", {"energy": 0.99, "fallback": "int8"})


def test_a_candidate_whose_mean_passes_but_whose_bound_fails_is_passed_over(family, heldout, tmp_path, monkeypatch):
    """On the tiny pair lowrank(energy=0.9) keeps ~90.7% on average but its bound is ~88%: below a 90% target."""
    import tvreg._build.calibrate as calibrate

    monkeypatch.setattr(calibrate, "CANDIDATES", [SMALL, LARGE])
    target = 0.9
    with_margin = _build(family, tmp_path / "m.tvskill", calibration=heldout, min_retention=target)
    without = _build(family, tmp_path / "n.tvskill", calibration=heldout, min_retention=target, margin=False)
    cal, plain = with_margin.manifest.calibration, without.manifest.calibration
    small = next(e for e in cal["explored"] if e["codec"].startswith("lowrank(energy=0.9,"))
    assert small["retention"] >= target > small["retention_bound"]  # the case this test is about
    assert cal["chosen"].startswith("lowrank(energy=0.99,") and cal["retention_bound"] >= target
    assert plain["chosen"] == small["codec"] and without.stored_bytes < with_margin.stored_bytes
    assert (plain["margin"], plain["retention_bound"]) == (None, None)
    assert plain["margin_reason"] == "turned off (--no-margin): judged on the mean"

    # The bounds, recomputed from per-text losses measured here (paired: the same texts for all three).
    pre = _nll(family.pre, HELDOUT, None)
    ft = _nll(family.pre, HELDOUT, _taus(build_skill(
        family.pre, finetuned=family.science, output=tmp_path / "e.tvskill", name="science", version="1.0.0"
    ).path))  # fmt: skip
    assert small["retention_bound"] == pytest.approx(_bootstrap_bound(pre, ft, _nll(family.pre, HELDOUT, _taus(without.path))), abs=1e-4)
    chosen = _nll(family.pre, HELDOUT, _taus(with_margin.path))
    assert cal["retention_bound"] == pytest.approx(_bootstrap_bound(pre, ft, chosen), abs=1e-4)


def test_no_margin_on_the_command_line_judges_the_mean(run, family, heldout, tmp_path):
    out = tmp_path / "s.tvskill"
    res = run(
        "build", "--base", family.pre, "--finetuned", family.science, "--name", "science", "--version", "1.0.0",
        "--codec", "auto", "--calibration", heldout, "--min-retention", "0.9", "--no-margin", "-o", out,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    with Artifact(out) as art:
        cal = art.manifest.calibration
    assert cal["margin"] is None and cal["retention_bound"] is None
    assert f"lossy, retention {100 * cal['retention']:.1f}% on {len(HELDOUT)} held-out texts (target 90%" in res.stdout


def _counting_hook(tmp_path: Path) -> tuple[str, Path]:
    """A hook scoring like the text file that appends a line to a log per call: the evaluations really made."""
    log = tmp_path / "calls.log"
    (tmp_path / "counting.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_calibrate import HELDOUT, _loss\n"
        "def score(model_dir):\n"
        f"    with open({str(log)!r}, 'a') as f:\n"
        "        f.write('call\\n')\n"
        "    return {'loss': _loss(model_dir, HELDOUT, None)}\n",
        encoding="utf-8",
    )
    return f"{tmp_path / 'counting.py'}:score", log


BUDGETS = [
    # (max_evaluations, what the budget leaves for the per-group search; 2 candidates: 2 references + 2 bisection steps)
    (40, "every layer its own group: 4 probes, then ⌈log₂(4+1)⌉ = 3 verifications at most"),
    (4 + 2 + 2, "2 groups (adjacent layers merged): 2 probes + ⌈log₂(2+1)⌉ = 2 verifications"),
    (5, "one evaluation left: no per-group search"),
    (3, "the uniform bisection itself stops after one step"),
]  # fmt: skip


@pytest.mark.parametrize("budget, what", BUDGETS, ids=[str(b) for b, _ in BUDGETS])
def test_the_recorded_evaluations_are_the_hook_calls_and_stay_within_the_budget(
    family, tmp_path, monkeypatch, budget, what
):
    import tvreg._build.calibrate as calibrate

    monkeypatch.setattr(calibrate, "CANDIDATES", [SMALL, LARGE])
    hook, log = _counting_hook(tmp_path)
    res = _build(family, tmp_path / "s.tvskill", calibration=hook, min_retention=0.95, max_evaluations=budget)
    cal = res.manifest.calibration
    calls = len(log.read_text().splitlines())
    assert cal["evaluations"] == calls == 2 + len(cal["explored"]) <= budget
    assert cal["max_evaluations"] == budget
    assert cal["retention"] >= 0.95
    plan = cal["plan"]
    if budget >= 8:
        assert plan["evaluations"] == plan["probes"] + plan["verifications"] == calls - 4
        groups = [g["group"] for g in plan["groups"]]
        if budget == 8:
            assert groups == ["lm_head … model.embed_tokens", "model.layers.0 … model.layers.1"]
            assert [g["tensors"] for g in plan["groups"]] == [2, 14]
        else:
            assert groups == ["lm_head", "model.embed_tokens", "model.layers.0", "model.layers.1"]
    elif budget == 5:
        assert plan is None and cal["plan_reason"] == "the budget of 5 evaluations leaves no room for a per-group search"
        assert cal["chosen"] == "lowrank(energy=0.99, fallback=int8)"
    else:
        assert plan is None and cal["plan_reason"] == "the budget of 3 evaluations ran out in the uniform bisection"


MIXED = [
    ("sparse", {"density": 0.5, "select": "random"}),
    ("sparse", {"density": 0.2, "select": "random"}),
    ("sparse", {"density": 0.05, "select": "random"}),
    ("sparse", {"density": 0.3}),
    ("sparse", {"density": 0.1}),
    ("lowrank", {"energy": 0.99, "fallback": "int8"}),
    ("lowrank", {"energy": 0.9, "fallback": "int8"}),
    ("lowrank", {"energy": 0.5, "fallback": "int8"}),
]


def test_the_uniform_search_finds_the_smallest_passing_setting_across_families(family, heldout, tmp_path, monkeypatch):
    """Retention grows with size along a family, not across families: one bisection of all sizes can step
    past the smallest passing setting, so each family is searched on its own. Checked against every
    candidate measured alone."""
    import tvreg._build.calibrate as calibrate

    target = 0.8
    alone = {}
    for i, setting in enumerate(MIXED):
        monkeypatch.setattr(calibrate, "CANDIDATES", [setting])
        cal = _build(family, tmp_path / f"{i}.tvskill", calibration=heldout, min_retention=target,
                     max_evaluations=3).manifest.calibration  # fmt: skip
        (entry,) = cal["explored"]
        alone[entry["codec"]] = (entry["bytes"], entry["retention"] >= target and entry["retention_bound"] >= target)
    passing = sorted((size, label) for label, (size, ok) in alone.items() if ok)
    assert passing and len(passing) < len(alone)  # the target separates the candidates
    monkeypatch.setattr(calibrate, "CANDIDATES", MIXED)
    cal = _build(family, tmp_path / "all.tvskill", calibration=heldout, min_retention=target,
                 max_evaluations=40).manifest.calibration  # fmt: skip
    picked = cal["plan"]["setting"] if cal["plan"] else cal["chosen"]
    assert picked == passing[0][1], (passing, cal["explored"])
    for entry in cal["explored"]:
        if ";" not in entry["codec"]:
            assert entry["bytes"] == alone[entry["codec"]][0]


GROUPINGS = [
    # (tensor names, at most how many groups, the groups expected, why)
    (["model.layers.10.mlp.w", "model.layers.2.mlp.w", "model.layers.2.attn.q", "lm_head.weight"], 9,
     [("lm_head", 1), ("model.layers.2", 2), ("model.layers.10", 1)], "layers in numeric order, not 10 before 2"),
    (["model.layers.3.mlp.experts.0.w", "model.layers.3.mlp.experts.7.w", "model.layers.3.router.w"], 9,
     [("model.layers.3", 3)], "a mixture's experts stay in their layer"),
    (["model.norm.weight", "model.layers.0.input_layernorm.weight", "model.embed_tokens.weight"], 9,
     [("model.embed_tokens", 1)], "vectors are not grouped: they stay exact"),
    ([f"model.layers.{i}.w" for i in range(5)], 2,
     [("model.layers.0 … model.layers.1", 2), ("model.layers.2 … model.layers.4", 3)], "adjacent layers merged to fit"),
]  # fmt: skip


@pytest.mark.parametrize("names, most, expected, why", GROUPINGS, ids=[g[3] for g in GROUPINGS])
def test_groups_are_layers_read_off_the_tensor_names(names, most, expected, why):
    from tvreg._build.calibrate import _groups

    taus = {n: torch.zeros(2, 2) if not n.endswith("norm.weight") else torch.zeros(2) for n in names}
    assert [(g, len(ns)) for g, ns in _groups(taus, most)] == expected


def test_the_budget_is_at_least_the_two_references(family, heldout, tmp_path):
    with pytest.raises(EvaluationError, match="the evaluation budget must be an integer of at least 2, not 1"):
        _build(family, tmp_path / "s.tvskill", calibration=heldout, max_evaluations=1)
    assert not (tmp_path / "s.tvskill").exists()


def test_uncalibrated_auto_is_unchanged_and_says_what_calibration_would_do(run, family, tmp_path):
    res = _build(family, tmp_path / "s.tvskill")
    assert res.manifest.calibration is None and '"calibration"' not in res.manifest.to_json()
    assert res.manifest.source["codec"] == "auto"
    out = run(
        "build", "--base", family.pre, "--finetuned", family.science, "--name", "science", "--version", "1.0.0",
        "--codec", "auto", "-o", tmp_path / "c.tvskill",
    )  # fmt: skip
    assert out.exit_code == 0 and "with `--calibration HELDOUT` it chooses by the share" in out.stdout
    assert "\n  calibration  " not in out.stdout  # no calibration row


def _hook_that_raises(tmp_path: Path) -> str:
    (tmp_path / "broken.py").write_text("def score(model_dir):\n    raise RuntimeError('GPU on fire')\n")
    return f"{tmp_path / 'broken.py'}:score"


BAD_DATA = [
    # (what, writes the data and returns the --calibration value, the error's first line)
    ("an empty file", lambda p: (p / "d.txt").write_text("\n  \n") and str(p / "d.txt"),
     "error: calibration data `{p}/d.txt` holds no texts."),
    ("a binary file", lambda p: (p / "d.txt").write_bytes(b"text\0\x01\x02") and str(p / "d.txt"),
     "error: calibration data `{p}/d.txt` holds NUL bytes; it is not a text file."),
    ("a file that is not UTF-8", lambda p: (p / "d.txt").write_bytes(b"caf\xe9\n") and str(p / "d.txt"),
     "error: calibration data `{p}/d.txt` is not UTF-8 text (byte 3)."),
    ("a missing file", lambda p: str(p / "nope.txt"),
     "error: calibration data `{p}/nope.txt` cannot be read (No such file or directory)."),
    ("a hook that raises", _hook_that_raises,
     "error: evaluation hook `{p}/broken.py:score` failed on `"),
    ("a JSON Lines file with a line that is not JSON",
     lambda p: (p / "d.jsonl").write_text('{"text": "fine"}\n{"text": \n') and str(p / "d.jsonl"),
     "error: calibration data `{p}/d.jsonl` line 2 is not JSON (Expecting value)."),
    ("a JSON Lines record without a text string",
     lambda p: (p / "d.jsonl").write_text('{"text": "fine"}\n\n{"text": 3}\n') and str(p / "d.jsonl"),
     "error: calibration data `{p}/d.jsonl` line 3 is not an object with a `text` string."),
    ("a JSON Lines file of blank texts",
     lambda p: (p / "d.jsonl").write_text('{"text": "  "}\n\n') and str(p / "d.jsonl"),
     "error: calibration data `{p}/d.jsonl` holds no texts."),
]  # fmt: skip


def test_a_json_lines_file_keeps_each_texts_newlines(tmp_path):
    from tvreg._build.calibrate import read_texts

    texts = ["def f(x):\n    return x\n", "plain text", 'quotes " and \\ and ünïcode']
    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps({"text": t, "source": "x"}) + "\n" for t in texts) + "\n", encoding="utf-8")
    assert read_texts(data) == texts
    flat = tmp_path / "heldout.txt"
    flat.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    assert read_texts(flat) == [json.dumps({"text": t}) for t in texts]  # only .jsonl is parsed


@pytest.mark.parametrize("what, make, first", BAD_DATA, ids=[b[0] for b in BAD_DATA])
def test_bad_calibration_data_is_one_sentence_with_a_hint_and_writes_nothing(run, family, tmp_path, what, make, first):
    data = make(tmp_path)
    out = tmp_path / "out" / "s.tvskill"
    out.parent.mkdir()
    res = run(
        "build", "--base", family.pre, "--finetuned", family.science, "--name", "science", "--version", "1.0.0",
        "--codec", "auto", "--calibration", data, "-o", out,
    )  # fmt: skip
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert lines[0].startswith(first.format(p=tmp_path)), lines
    assert "Traceback" not in res.stderr
    assert len(lines) == 2 and lines[1].startswith("hint: ")
    assert list(out.parent.iterdir()) == []


def test_calibration_needs_codec_auto_and_a_sane_target(family, heldout, tmp_path):
    with pytest.raises(TvregError, match="only for codec `auto`, not `int8`"):
        build_skill(
            family.pre, finetuned=family.science, output=tmp_path / "s.tvskill", name="s", version="1.0.0",
            codec="int8", calibration=heldout,
        )  # fmt: skip
    with pytest.raises(EvaluationError, match=r"must be in \(0, 1\], not 1.5"):
        _build(family, tmp_path / "s.tvskill", calibration=heldout, min_retention=1.5)
    assert not (tmp_path / "s.tvskill").exists()


def test_data_where_the_skill_changes_nothing_is_refused(family, tmp_path):
    hook = tmp_path / "const.py"
    hook.write_text("def score(model_dir):\n    return {'loss': 1.0}\n")
    with pytest.raises(EvaluationError, match="scores the same as the base model"):
        _build(family, tmp_path / "s.tvskill", calibration=f"{hook}:score")
    assert not (tmp_path / "s.tvskill").exists()


PROJECT_ERRORS = [
    # ([build] table, the reason the project file is refused)
    ({"codec": "auto", "calibration": "h.txt", "min_retention": 1.5}, "`build.min_retention` must be a number in (0, 1]"),
    ({"codec": "auto", "calibration": "h.txt", "min_retention": True}, "`build.min_retention` must be a number in (0, 1]"),
    ({"codec": "int8", "calibration": "h.txt"}, '`build.calibration` chooses the coding only with `codec = "auto"`'),
    ({"codec": "auto", "calibration": 3}, "`build.calibration` must be a string"),
    ({"codec": "auto", "calibration": "h.txt", "margin": "no"}, "`build.margin` must be true or false"),
    ({"codec": "auto", "calibration": "h.txt", "max_evaluations": 1}, "`build.max_evaluations` must be an integer of at least 2"),
    ({"codec": "auto", "calibration": "h.txt", "max_evaluations": 10.0}, "`build.max_evaluations` must be an integer of at least 2"),
]  # fmt: skip


@pytest.mark.parametrize("build, reason", PROJECT_ERRORS)
def test_the_project_file_takes_calibration_in_its_build_table(family, tmp_path, build, reason):
    import tomli_w

    from tvreg._registry.project import load_project
    from tvreg.errors import ProjectError

    def write(table: dict) -> Path:
        fields = {"name": "alice/science", "version": "1.0.0", "base": str(family.pre)}
        (tmp_path / "tvskill.toml").write_text(tomli_w.dumps({**fields, "build": {"finetuned": "ft", **table}}))
        return tmp_path

    (tmp_path / "h.txt").write_text("\n".join(HELDOUT))
    project = load_project(write({"codec": "auto", "calibration": "h.txt", "min_retention": 0.95}))
    assert project.calibration == str(tmp_path / "h.txt") and project.min_retention == 0.95 and project.margin
    assert not load_project(write({"codec": "auto", "calibration": "h.txt", "margin": False})).margin
    assert project.max_evaluations == calibrate.DEFAULT_MAX_EVALUATIONS
    assert load_project(write({"codec": "auto", "calibration": "h.txt", "max_evaluations": 12})).max_evaluations == 12
    assert load_project(write({"codec": "auto", "calibration": "evals:score"})).calibration == "evals:score"
    with pytest.raises(ProjectError) as caught:
        load_project(write(build))
    assert reason in caught.value.message


LOW_BIT = [
    ("sparse", {"density": 0.5, "select": "random"}),
    ("int8", {}),
    ("sparse", {"density": 0.5, "select": "random", "values": "int4"}),
    ("sparse", {"density": 0.5, "select": "random", "values": "sign"}),
    ("sign", {}),
]


def test_the_search_picks_a_low_bit_family_when_it_is_the_smallest_that_passes(family, heldout, tmp_path, monkeypatch):
    """The low-bit settings (issue 23) are families of their own (dense int4 and sign, random sparse with int4
    or sign values); the search measures them like any other and keeps the smallest passing."""
    import tvreg._build.calibrate as calibrate

    fams = {calibrate.family(c, o) for c, o in LOW_BIT}
    assert calibrate.family("int8", {}) == ("dense",) != calibrate.family("sign", {}) and len(fams) == 5
    target = 0.5
    alone = {}
    for i, setting in enumerate(LOW_BIT):
        monkeypatch.setattr(calibrate, "CANDIDATES", [setting])
        cal = _build(family, tmp_path / f"{i}.tvskill", calibration=heldout, min_retention=target,
                     max_evaluations=3).manifest.calibration  # fmt: skip
        (entry,) = cal["explored"]
        alone[i] = (entry["bytes"], entry["retention"] >= target and entry["retention_bound"] >= target, entry["retention"])
    passing = sorted((size, i) for i, (size, ok, _) in alone.items() if ok)
    smallest = LOW_BIT[passing[0][1]]
    assert smallest[0] == "sign" or smallest[1].get("values") in ("int4", "sign"), alone
    assert alone[passing[0][1]][0] < min(alone[0][0], alone[1][0])
    monkeypatch.setattr(calibrate, "CANDIDATES", LOW_BIT)
    res = _build(family, tmp_path / "all.tvskill", calibration=heldout, min_retention=target, max_evaluations=12)
    cal = res.manifest.calibration
    picked = cal["plan"]["setting"] if cal["plan"] else cal["chosen"]
    assert picked == calibrate._Uniform(calibrate.make_codec(*smallest), smallest[1]).describe(), cal["explored"]
    matrices = {e.codec for e in res.manifest.tensors.values() if len(e.shape) == 2}
    assert smallest[0] in matrices
    with Artifact(res.path) as art:
        for name in art.manifest.tensors:
            art.verify(name)


FINE_LADDER = [
    ("sparse", {"density": d, "select": "random", "rescale": "row"})
    for d in (0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.45, 0.4)
]


def test_moved_groups_step_further_down_their_family_and_the_artifact_holds_each_level(
    family, heldout, tmp_path, monkeypatch
):
    """After the per-group step, the moved groups go on down the smaller setting's family, one setting at a
    time (the same sensitivity order, a bisection per step); every level a group reached is what is stored."""
    monkeypatch.setattr(calibrate, "CANDIDATES", FINE_LADDER)
    target = 0.95
    res = _build(family, tmp_path / "s.tvskill", calibration=heldout, min_retention=target)
    cal = res.manifest.calibration
    plan = cal["plan"]
    steps = [d for d in plan["deeper"] if d["moved"]]
    assert steps, plan  # on this family the moved layers take further steps
    describe = [calibrate._Uniform(calibrate.make_codec(c, o), o).describe() for c, o in FINE_LADDER]
    ladder = describe[describe.index(plan["smaller"]) + 1 :]
    assert [d["setting"] for d in plan["deeper"]] == ladder[: len(plan["deeper"])]
    assert [d["moved"] for d in steps] == sorted((d["moved"] for d in steps), reverse=True) and steps[0]["moved"] <= plan["moved"]
    assert cal["chosen"] == f"{plan['setting']}; {plan['smaller']} on {plan['moved']} of 4 groups" + "".join(
        f"; {d['setting']} on {d['moved']} of them" for d in steps
    )
    for k, d in enumerate(steps):
        assert sum(g["level"] >= k + 2 for g in plan["groups"]) == d["moved"]
    assert plan["evaluations"] == plan["probes"] + plan["verifications"] and cal["evaluations"] <= cal["max_evaluations"]

    pre = _nll(family.pre, HELDOUT, None)
    exact = build_skill(family.pre, finetuned=family.science, output=tmp_path / "e.tvskill", name="science", version="1.0.0")
    ft = _nll(family.pre, HELDOUT, _taus(exact.path))
    coded = _nll(family.pre, HELDOUT, _taus(res.path))
    losses = [sum(n for n, _ in x) / sum(c for _, c in x) for x in (pre, ft, coded)]
    assert (losses[0] - losses[2]) / (losses[0] - losses[1]) == pytest.approx(cal["retention"], abs=1e-4)
    assert cal["retention"] >= target and _bootstrap_bound(pre, ft, coded) >= target

    by_level = [plan["setting"], plan["smaller"], *(d["setting"] for d in steps)]
    level_of = {g["group"]: g["level"] for g in plan["groups"]}
    uniform = {}
    for level in set(level_of.values()):
        codec, opts = FINE_LADDER[describe.index(by_level[level])]
        uniform[level] = build_skill(
            family.pre, finetuned=family.science, output=tmp_path / f"u{level}.tvskill", name="science",
            version="1.0.0", codec=codec, codec_options=opts,
        ).manifest  # fmt: skip
    for name, entry in res.manifest.tensors.items():
        if len(entry.shape) == 2:
            (level,) = [lv for g, lv in level_of.items() if name.startswith(g + ".")]
            assert entry.sha256 == uniform[level].tensors[name].sha256, name
    stored = sum(t.stored_bytes for t in res.manifest.tensors.values())
    assert stored == next(e["bytes"] for e in cal["explored"] if e["codec"] == cal["chosen"])


def test_every_entry_point_defaults_to_the_same_evaluation_budget(tmp_path):
    """The CLI, ``build_skill``, ``tvskill.toml`` and the search read one figure (they once drifted: 40 beside 48)."""
    import inspect

    from tvreg._registry import project
    from tvreg.cli.skills import build as build_cmd

    budget = calibrate.DEFAULT_MAX_EVALUATIONS
    assert inspect.signature(build_skill).parameters["max_evaluations"].default == budget
    assert inspect.signature(calibrate.calibrate).parameters["max_evaluations"].default == budget
    assert next(p for p in build_cmd.params if p.name == "max_evaluations").default == budget
    assert project.SkillProject.__dataclass_fields__["max_evaluations"].default == budget
