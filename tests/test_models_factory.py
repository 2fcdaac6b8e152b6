"""Quick checks that the tiny-checkpoint factory in ``tests/models.py`` does what it claims.

If these fail, every tvreg test built on the factory is suspect, so keep them fast and explicit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import (
    CODING_TEXTS,
    GENERIC_TEXTS,
    SCIENCE_TEXTS,
    Family,
    build_family,
    make_lora_adapter,
    make_tokenizer,
    merged_reference,
    read_state_dict,
    save_model_dir,
    tiny_llama_config,
    train_steps,
)
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

EXPECTED_NAMES = {
    "model.embed_tokens.weight",
    "model.norm.weight",
    "lm_head.weight",
    *(
        f"model.layers.{i}.{n}.weight"
        for i in range(2)
        for n in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
            "input_layernorm",
            "post_attention_layernorm",
        )
    ),
}


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Family:
    return build_family(tmp_path_factory.mktemp("family_fp32"))


@pytest.fixture(scope="module")
def family_bf16(tmp_path_factory: pytest.TempPathFactory) -> Family:
    return build_family(
        tmp_path_factory.mktemp("family_bf16"),
        dtype=torch.bfloat16,
        tie_word_embeddings=True,
        extra_general_tokens=3,
        sharded_general=True,
    )


def test_tokenizer_roundtrip(tmp_path: Path) -> None:
    tok = make_tokenizer(tmp_path)
    assert len(tok) == 100
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert (tmp_path / "tokenizer.json").exists()
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "def f(x):\n    return x + 1"
    ids = loaded.encode(text)
    assert ids == tok.encode(text)
    assert ids[0] == 1 and len(ids) == len(text) + 1  # <s> + one id per character
    assert loaded.decode(ids, skip_special_tokens=True) == text


def test_tiny_llama_tensor_names() -> None:
    model = LlamaForCausalLM(tiny_llama_config(100))
    sd = model.state_dict()
    assert set(sd) == EXPECTED_NAMES
    assert sd["model.layers.0.self_attn.k_proj.weight"].shape == (32, 64)  # GQA: 2 kv heads x 16
    assert sd["lm_head.weight"].shape == (100, 64)


def test_train_steps_deterministic_and_changes_weights() -> None:
    tok = make_tokenizer()
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model = LlamaForCausalLM(tiny_llama_config(len(tok)))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        train_steps(model, GENERIC_TEXTS, tok, steps=3, lr=1e-3, seed=5)
        results.append(model.state_dict())
    for k in EXPECTED_NAMES:
        assert torch.equal(results[0][k], results[1][k]), k
        assert not torch.equal(results[0][k], before[k]), k


def test_save_model_dir_dtype_and_no_mutation(tmp_path: Path) -> None:
    tok = make_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(len(tok)))
    out = save_model_dir(model, tok, tmp_path / "m", dtype=torch.float16)
    assert model.dtype == torch.float32  # caller's model untouched
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    sd = read_state_dict(out)
    assert set(sd) == EXPECTED_NAMES
    assert all(v.dtype == torch.float16 for v in sd.values())
    assert torch.equal(sd["model.norm.weight"], model.model.norm.weight.detach().half())
    assert (out / "tokenizer.json").exists() and (out / "generation_config.json").exists()


def test_family_fp32_loads_and_skills_differ(family: Family) -> None:
    sds = {name: read_state_dict(getattr(family, name)) for name in ("pre", "general", "science", "coding")}
    for name, sd in sds.items():
        assert set(sd) == EXPECTED_NAMES, name
        assert all(v.dtype == torch.float32 for v in sd.values()), name
    for name in ("general", "science", "coding"):
        changed = [k for k in EXPECTED_NAMES if not torch.equal(sds[name][k], sds["pre"][k])]
        assert len(changed) == len(EXPECTED_NAMES), (name, set(EXPECTED_NAMES) - set(changed))
    # The two skill task vectors point in different directions.
    k = "model.layers.0.mlp.up_proj.weight"
    tau_s = (sds["science"][k] - sds["pre"][k]).flatten()
    tau_c = (sds["coding"][k] - sds["pre"][k]).flatten()
    assert torch.cosine_similarity(tau_s, tau_c, dim=0) < 0.99
    assert not (family.general / "model.safetensors.index.json").exists()
    for path in (family.pre, family.general, family.science, family.coding):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(path)
        logits = model(**tok("Water boils", return_tensors="pt")).logits
        assert logits.shape[-1] == family.vocab_size and torch.isfinite(logits).all()


def test_family_bf16_tied_sharded_extra_tokens(family_bf16: Family) -> None:
    f = family_bf16
    assert f.general_vocab_size == f.vocab_size + 3
    # Sharded G: index + >= 2 shard files, all listed tensors present.
    index = json.loads((f.general / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2 and all((f.general / s).exists() for s in shards)
    assert not (f.general / "model.safetensors").exists()
    g = read_state_dict(f.general)
    pre = read_state_dict(f.pre)
    assert set(g) == set(index["weight_map"]) == set(pre)
    # Tied: one embedding tensor on disk, no lm_head.
    assert "lm_head.weight" not in pre and "model.embed_tokens.weight" in pre
    assert g["model.embed_tokens.weight"].shape == (f.vocab_size + 3, 64)
    assert pre["model.embed_tokens.weight"].shape == (f.vocab_size, 64)
    for path in (f.pre, f.general, f.science, f.coding):
        cfg = json.loads((path / "config.json").read_text())
        assert cfg["dtype"] == "bfloat16" and cfg["tie_word_embeddings"] is True
        assert all(v.dtype == torch.bfloat16 for v in read_state_dict(path).values())
    assert json.loads((f.general / "config.json").read_text())["vocab_size"] == f.vocab_size + 3
    assert len(AutoTokenizer.from_pretrained(f.general)) == f.vocab_size + 3
    model = AutoModelForCausalLM.from_pretrained(f.general)
    assert model.dtype == torch.bfloat16  # transformers 5 loads with dtype="auto" by default
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.lm_head.weight.shape[0] == f.vocab_size + 3


@pytest.mark.parametrize("use_rslora", [False, True])
def test_lora_adapter_and_merged_reference(family: Family, tmp_path: Path, use_rslora: bool) -> None:
    r, alpha = 4, 8
    out = make_lora_adapter(
        family.pre,
        tmp_path / "lora",
        SCIENCE_TEXTS + CODING_TEXTS,
        r=r,
        lora_alpha=alpha,
        use_rslora=use_rslora,
    )
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == r and cfg["use_rslora"] is use_rslora
    adapter = load_file(out / "adapter_model.safetensors")
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    a, b = adapter[f"{prefix}.lora_A.weight"], adapter[f"{prefix}.lora_B.weight"]
    assert a.shape == (r, 64) and b.shape == (64, r)
    assert b.abs().sum() > 0  # trained, so B != 0 and the delta is non-zero
    assert len(adapter) == 2 * 2 * 2  # 2 layers x {q,v} x {A,B}

    merged = merged_reference(family.pre, out)
    pre = read_state_dict(family.pre)
    scale = alpha / math.sqrt(r) if use_rslora else alpha / r
    for k, v in pre.items():
        if ".q_proj." in k or ".v_proj." in k:
            assert not torch.equal(merged[k], v), k
        else:
            assert torch.equal(merged[k], v), k
    expected = pre["model.layers.0.self_attn.q_proj.weight"] + scale * (b @ a)
    torch.testing.assert_close(merged["model.layers.0.self_attn.q_proj.weight"], expected)
