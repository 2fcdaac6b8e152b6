"""`tvreg export`: skills as PEFT LoRA adapters that real PEFT loads over G, with honest error reports."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from click.testing import CliRunner
from helpers import copy_model
from peft import PeftModel
from safetensors import safe_open
from tiny_models import SCIENCE_TEXTS, make_lora_adapter
from transformers import LlamaForCausalLM

from tvreg._build.adapter import adapter_deltas, read_adapter
from tvreg._build.build import build_skill
from tvreg._env.environment import init_environment
from tvreg._env.export import REPORT_NAME, export_peft
from tvreg._env.lockfile import read_lock
from tvreg._env.operations import install
from tvreg._format.artifact import Artifact
from tvreg.cli import main
from tvreg.errors import ExportError, IncompatibleBase

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


@pytest.fixture(scope="module")
def skills(family, tmp_path_factory):
    out = tmp_path_factory.mktemp("export-skills")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TVREG_CACHE_DIR", str(out / "cache"))
        mp.setenv("TVREG_DATA_DIR", str(out / "data"))
        made = {}
        for name, size in (("science", 61000), ("coding", 22000)):
            made[name] = out / f"{name}.tvskill"
            build_skill(
                family.pre, finetuned=getattr(family, name), output=made[name], name=name,
                version="1.0.0", dataset_size=size,
            )  # fmt: skip
        adapter = make_lora_adapter(family.pre, out / "lora", SCIENCE_TEXTS, r=4, lora_alpha=8, steps=3)
        made["lora"] = out / "lora.tvskill"
        build_skill(
            family.pre, adapter=adapter, output=made["lora"], name="sci-lora", version="1.0.0", dataset_size=9
        )
    made["adapter"] = adapter
    return made


@pytest.fixture
def env(family, skills, tmp_path):
    """A model environment with science and coding installed (task arithmetic)."""
    model = copy_model(family.general, tmp_path / "mymodel")
    init_environment(model, base=family.pre, general_size=275000)
    install([skills["science"], skills["coding"]], into=model)
    return model


def _fp32(path) -> LlamaForCausalLM:
    return LlamaForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def _logits(model, seed: int = 3) -> torch.Tensor:
    ids = torch.randint(0, 90, (2, 24), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(input_ids=ids).logits


def _with_pristine_weights(env, tmp_path):
    """G's own model directory (config from the environment, weights from the pristine copy)."""
    from tvreg._env.environment import open_pristine

    g = tmp_path / "g-view"
    g.mkdir()
    for f in env.glob("*.json"):
        if f.name not in ("tvreg.tensors.json",):
            (g / f.name).symlink_to(f.resolve())
    with open_pristine(read_lock(env)) as pristine:
        for f in pristine.directory.iterdir():
            (g / f.name).unlink(missing_ok=True)
            (g / f.name).symlink_to(f.resolve())
    return g


def test_lora_skill_exports_back_at_its_own_rank(family, skills, tmp_path):
    """adapter → skill → adapter: rank 4 again, B A equal to the original update to rounding."""
    original = read_adapter(skills["adapter"])
    for dtype, bound in (("float32", 1e-5), ("bfloat16", 2**-7)):
        out = tmp_path / dtype
        (result,) = export_peft(skills["lora"], out, base=family.pre, energy=1 - 1e-9, dtype=dtype)
        lora = [m for m in result.modules if m.how == "lora"]
        assert {m.rank for m in lora} == {original.r}
        assert 0 < max(m.rel_error for m in lora) < bound
        if dtype == "float32":
            assert max(m.rel_error for m in lora) < 1e-6

    # vLLM's layout: only lora_A/lora_B weights under base_model.model.<module>, full module names.
    out = tmp_path / "float32"
    config = json.loads((out / "adapter_config.json").read_text())
    modules = [f"model.layers.{i}.self_attn.{m}_proj" for i in (0, 1) for m in ("q", "v")]
    assert config["target_modules"] == sorted(modules) and config["r"] == config["lora_alpha"] == 4
    with safe_open(out / "adapter_model.safetensors", framework="pt") as f:
        assert set(f.keys()) == {f"base_model.model.{m}.lora_{p}.weight" for m in modules for p in "AB"}

    shapes = {n: tuple(t.shape) for n, t in _fp32(family.pre).state_dict().items()}
    want = {d.name: d.tensor for d in adapter_deltas(skills["adapter"], shapes)}
    got = {d.name: d.tensor for d in adapter_deltas(out, shapes)}
    assert got.keys() == want.keys()
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=0, atol=1e-5 * want[name].abs().max())

    # Real PEFT loads both over θ_pre and they answer alike.
    ours = PeftModel.from_pretrained(_fp32(family.pre), str(out)).eval()
    theirs = PeftModel.from_pretrained(_fp32(family.pre), str(skills["adapter"])).eval()
    assert torch.allclose(_logits(ours), _logits(theirs), atol=1e-5)


def test_full_finetune_export_reports_its_true_error(family, skills, env, tmp_path):
    out = tmp_path / "adapter"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (result,) = export_peft(env, out, rank=8, others="save")
    assert result.path == out and (out / REPORT_NAME).is_file()
    lock = read_lock(env)

    # ΔW = Σ fp32(ω)·τ from the artifacts, against B A read back with PEFT's own scaling rules.
    arts = [(Artifact(skills[s.name]), torch.tensor(s.weight, dtype=torch.float32)) for s in lock.skills]
    shapes = {n: tuple(t.shape) for n, t in _fp32(family.pre).state_dict().items()}
    applied = {d.name: d for d in adapter_deltas(out, shapes)}
    for m in result.modules:
        if m.how != "lora":
            continue
        assert m.rank == 8
        delta = sum(a.decode(m.name) * w for a, w in arts)
        got = applied[m.name]
        assert got.kind == "delta"
        true = float(torch.linalg.norm(delta - got.tensor) / torch.linalg.norm(delta))
        assert true == pytest.approx(m.rel_error, rel=1e-4, abs=1e-7), m.name
        assert 0.05 < true < 1  # rank 8 of 64: a real truncation, reported as such
    saved = [m for m in result.modules if m.how == "saved"]
    assert {m.name for m in saved} >= {"model.embed_tokens.weight", "model.norm.weight"}

    # PEFT applies exactly that: G + adapter vs the installed model, from the probe and by hand.
    assert result.probe is not None and result.probe.reference.startswith("installed model")
    full = tmp_path / "full"
    (exact,) = export_peft(env, full, energy=1.0, others="save")
    assert max(m.rel_error for m in exact.modules) < 1e-5
    assert exact.probe.top1_agreement == 1.0 and exact.probe.rel_error < 1e-5
    g = _with_pristine_weights(env, tmp_path)
    served = PeftModel.from_pretrained(_fp32(g), str(full)).eval()
    installed = _fp32(env)
    assert torch.allclose(_logits(served), _logits(installed), atol=1e-4)
    truncated = PeftModel.from_pretrained(_fp32(g), str(out)).eval()
    assert not torch.allclose(_logits(truncated), _logits(installed), atol=1e-4)
    assert result.probe.rel_error > exact.probe.rel_error


def test_per_skill_adapters_carry_each_weighted_vector(family, skills, env, tmp_path):
    out = tmp_path / "per-skill"
    results = export_peft(env, out, energy=1.0, per_skill=True, others="drop", check=False)
    assert sorted(p.name for p in out.iterdir()) == ["coding", "science"]
    lock = read_lock(env)
    shapes = {n: tuple(t.shape) for n, t in _fp32(family.pre).state_dict().items()}
    for r in results:
        skill = lock.skill(r.path.name)
        with Artifact(skills[skill.name]) as art:
            for d in adapter_deltas(r.path, shapes):
                want = art.decode(d.name) * torch.tensor(skill.weight, dtype=torch.float32)
                assert torch.allclose(d.tensor, want, atol=2e-5 * float(want.abs().max()))
        dropped = [m for m in r.modules if m.how == "dropped"]
        assert dropped and all(m.rel_error == 1.0 for m in dropped)
        assert r.rel_error > 0


def test_refusals_name_the_tensor_and_leave_nothing(family, skills, env, tmp_path):
    out = tmp_path / "adapter"
    with pytest.raises(ExportError) as exc:
        export_peft(env, out, rank=4)
    assert exc.value.message.startswith(
        "`model.embed_tokens.weight` (an embedding) and 5 more tensors of `mymodel`"
    )
    assert any("--others save" in h for h in exc.value.hints)
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if "export" in p.name] == []

    with pytest.raises(ExportError, match="already exists"):
        export_peft(env, tmp_path, rank=4)
    with pytest.raises(IncompatibleBase):
        export_peft(skills["science"], out, base=family.general, rank=4)
    with pytest.raises(ExportError, match="needs the model it will be served on"):
        export_peft(skills["science"], out, rank=4)

    ties = copy_model(family.general, tmp_path / "tiesmodel")
    init_environment(ties, base=family.pre, general_size=275000)
    install([skills["science"]], into=ties, method="ties")
    with pytest.raises(ExportError, match="not a weighted sum") as exc:
        export_peft(ties, out, rank=4, others="save")
    assert any("--per-skill" in h for h in exc.value.hints)

    result = CliRunner().invoke(main, ["export", str(env), "-o", str(out), "--rank", "4"])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0].startswith("error: `model.embed_tokens.weight` (an embedding)")
    assert result.stderr.splitlines()[1].startswith("hint: store them whole as PEFT `modules_to_save`")
    assert not out.exists()


def test_cli_reports_errors_sizes_and_probe(env, tmp_path):
    out = tmp_path / "adapter"
    args = ["export", str(env), "--as", "peft", "-o", str(out), "--energy", "0.9", "--others", "save"]
    result = CliRunner().invoke(main, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.stdout)
    assert report["adapter_bytes"] == (out / "adapter_model.safetensors").stat().st_size
    assert report["artifact_bytes"] > 0 and 0 < report["rel_error"] < 0.5
    assert report["probe"]["tokens"] == 128 and report["probe"]["top1_agreement"] > 0.5
    config = json.loads((out / "adapter_config.json").read_text())
    lora = [m for m in report["modules"] if m["how"] == "lora"]
    ranks = {m["rank"] for m in lora}
    assert len(ranks) > 1 and config["r"] in ranks  # --energy chose ranks per module
    assert all(config["alpha_pattern"][k] == v for k, v in config["rank_pattern"].items())
    text = CliRunner().invoke(
        main, ["export", str(env), "-o", str(tmp_path / "b"), "--rank", "2", "--others", "save"]
    )
    assert text.exit_code == 0 and "top-1 agreement" in text.stdout and "adapter" in text.stdout


def test_tied_embeddings_and_added_tokens_in_bf16(family_bf16, tmp_path):
    """G ties lm_head to the embeddings and added 3 tokens: both saved modules get θ_G + ΔW, new rows kept."""
    skill = tmp_path / "science.tvskill"
    build_skill(
        family_bf16.pre, finetuned=family_bf16.science, output=skill, name="science", version="1.0.0",
        dataset_size=61000,
    )  # fmt: skip
    model = copy_model(family_bf16.general, tmp_path / "mymodel")
    init_environment(model, base=family_bf16.pre, general_size=275000)
    install([skill], into=model)
    out = tmp_path / "adapter"
    (result,) = export_peft(model, out, energy=1.0, others="save")
    config = json.loads((out / "adapter_config.json").read_text())
    assert {"lm_head", "model.embed_tokens"} <= set(config["modules_to_save"])
    with safe_open(out / "adapter_model.safetensors", framework="pt") as f:
        emb = f.get_tensor("base_model.model.model.embed_tokens.weight")
        assert emb.dtype == torch.bfloat16 and emb.shape[0] == family_bf16.general_vocab_size
        assert torch.equal(emb, f.get_tensor("base_model.model.lm_head.weight"))
    installed = _fp32(model).state_dict()["model.embed_tokens.weight"]
    assert torch.equal(emb.float(), installed)  # one rounding of θ_G + ΔW, as install does
    assert result.probe.top1_agreement == 1.0 and result.probe.rel_error < 1e-3
