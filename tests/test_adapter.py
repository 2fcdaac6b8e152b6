"""tvreg._build.adapter against real PEFT adapters: base + Σ τ must equal PEFT's own merge_and_unload."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from tiny_models import tiny_llama_config
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

from tvreg._build import adapter as adapter_mod
from tvreg._build.adapter import AdapterDelta, adapter_deltas, check_shapes, header_shapes, read_adapter
from tvreg.errors import CheckpointError, CorruptCheckpoint, TensorMismatch, UnsafeCheckpoint

VOCAB = 128
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


def _llama() -> LlamaForCausalLM:
    return LlamaForCausalLM(tiny_llama_config(VOCAB, attention_bias=True))


def _gpt2() -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=32))


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("llama_base")
    _llama().save_pretrained(out)
    return out


def _train_adapter(model_cls: type, base_dir: Path, out: Path, **lora: object) -> Path:
    """A few AdamW steps on random tokens, so every LoRA factor (and saved module) is non-trivial."""
    torch.manual_seed(1)
    model = get_peft_model(model_cls.from_pretrained(base_dir), LoraConfig(r=4, lora_alpha=8, **lora))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(4):
        ids = torch.randint(0, VOCAB, (2, 16))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(out)
    return out


def _check_roundtrip(model_cls: type, base_dir: Path, adapter_dir: Path) -> dict[str, AdapterDelta]:
    base = {k: v.clone() for k, v in model_cls.from_pretrained(base_dir).state_dict().items()}
    peft_model = PeftModel.from_pretrained(model_cls.from_pretrained(base_dir), adapter_dir)
    info = read_adapter(adapter_dir)
    scaled = {
        n.removeprefix("base_model.model."): m.scaling["default"]
        for n, m in peft_model.named_modules()
        if isinstance(getattr(m, "scaling", None), dict)
    }
    assert scaled and all(info.scaling(n) == s for n, s in scaled.items()), scaled
    expected = peft_model.merge_and_unload().state_dict()

    items = list(adapter_deltas(adapter_dir, {k: tuple(v.shape) for k, v in base.items()}))
    names = [d.name for d in items]
    assert names == sorted(set(names)), "one item per name, sorted"
    merged = dict(base)
    for d in items:
        assert d.tensor.dtype == torch.float32 and d.kind in ("delta", "replace")
        tau = d.tensor if d.kind == "delta" else d.tensor - base[d.name]
        merged[d.name] = base[d.name] + tau
    assert merged.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(merged[name], expected[name], rtol=1e-6, atol=1e-6, msg=name)
    changed = {n for n in expected if not torch.equal(expected[n], base[n])}
    assert changed and changed <= set(names)
    return {d.name: d for d in items}


L0 = "model.layers.0."
CASES: dict[str, dict[str, Any]] = {
    "plain": {"target_modules": ["q_proj", "v_proj", "down_proj"]},
    "rslora": {"target_modules": ["q_proj", "v_proj", "down_proj"], "use_rslora": True},
    "patterns": {
        "target_modules": ["q_proj", "v_proj", "down_proj"],
        "rank_pattern": {"layers.0.self_attn.q_proj": 2, "v_proj": 8},
        "alpha_pattern": {"down_proj": 32, r"layers\.1\.self_attn\.q_proj": 3},
    },
    "patterns_rslora": {
        "target_modules": ["q_proj", "down_proj"],
        "use_rslora": True,
        "rank_pattern": {"down_proj": 2},
        "alpha_pattern": {"q_proj": 5},
    },
    "embedding": {"target_modules": ["embed_tokens", "q_proj"]},
    "modules_to_save": {"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]},
    "lora_bias": {"target_modules": ["q_proj", "o_proj"], "lora_bias": True},
    "bias_all": {"target_modules": ["q_proj"], "bias": "all"},
}
KINDS = {
    "plain": {f"{L0}self_attn.q_proj.weight": "delta", f"{L0}mlp.down_proj.weight": "delta"},
    "patterns": {f"{L0}self_attn.v_proj.weight": "delta"},
    "embedding": {"model.embed_tokens.weight": "replace", f"{L0}self_attn.q_proj.weight": "delta"},
    "modules_to_save": {"lm_head.weight": "replace", f"{L0}self_attn.q_proj.weight": "delta"},
    "lora_bias": {f"{L0}self_attn.o_proj.bias": "delta", f"{L0}self_attn.o_proj.weight": "delta"},
    "bias_all": {f"{L0}self_attn.q_proj.bias": "replace", f"{L0}self_attn.k_proj.bias": "replace"},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_peft_merge(case: str, llama_dir: Path, tmp_path: Path) -> None:
    adapter = _train_adapter(LlamaForCausalLM, llama_dir, tmp_path / case, **CASES[case])
    got = _check_roundtrip(LlamaForCausalLM, llama_dir, adapter)
    for name, kind in KINDS.get(case, {}).items():
        assert got[name].kind == kind, name
        assert got[name].tensor.abs().max() > 0, name


def test_patterns_pick_peft_rank_and_alpha(llama_dir: Path, tmp_path: Path) -> None:
    info = read_adapter(_train_adapter(LlamaForCausalLM, llama_dir, tmp_path / "p", **CASES["patterns"]))
    assert info.scaling(f"{L0}self_attn.q_proj") == 8 / 2
    assert info.scaling("model.layers.1.self_attn.q_proj") == 3 / 4
    assert info.scaling(f"{L0}self_attn.v_proj") == 8 / 8
    assert info.scaling(f"{L0}mlp.down_proj") == 32 / 4


def test_gpt2_conv1d_fan_in_fan_out(tmp_path: Path) -> None:
    torch.manual_seed(0)
    _gpt2().save_pretrained(tmp_path / "base")
    adapter = _train_adapter(
        GPT2LMHeadModel,
        tmp_path / "base",
        tmp_path / "a",
        target_modules=["c_attn", "c_proj"],
        fan_in_fan_out=True,
    )
    got = _check_roundtrip(GPT2LMHeadModel, tmp_path / "base", adapter)
    assert got["transformer.h.0.attn.c_attn.weight"].tensor.shape == (64, 192)


@pytest.fixture(scope="module")
def plain_adapter(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train_adapter(LlamaForCausalLM, llama_dir, tmp_path_factory.mktemp("plain"), **CASES["plain"])


@pytest.fixture(scope="module")
def shapes(llama_dir: Path) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in LlamaForCausalLM.from_pretrained(llama_dir).state_dict().items()}


def test_refuses_dora(llama_dir: Path, tmp_path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    adapter = _train_adapter(
        LlamaForCausalLM, llama_dir, tmp_path / "dora", target_modules=["q_proj"], use_dora=True
    )
    with pytest.raises(CheckpointError, match="DoRA") as exc:
        list(adapter_deltas(adapter, shapes))
    assert exc.value.hints


class _Payload:
    """Unpickling this creates a directory: proof that a loader ran pickle code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def test_refuses_pickle_without_unpickling(
    plain_adapter: Path, tmp_path: Path, shapes: dict[str, tuple[int, ...]]
) -> None:
    adapter, marker = tmp_path / "pkl", tmp_path / "UNPICKLED"
    adapter.mkdir()
    shutil.copy(plain_adapter / "adapter_config.json", adapter)
    torch.save({"base_model.model.x.lora_A.weight": _Payload(marker)}, adapter / "adapter_model.bin")
    with pytest.raises(UnsafeCheckpoint, match="never unpickles") as exc:
        list(adapter_deltas(adapter, shapes))
    assert "adapter_model.bin" in str(exc.value) and exc.value.hints
    assert not marker.exists()
    torch.load(adapter / "adapter_model.bin", weights_only=False)  # the payload is live: it would have fired
    assert marker.exists()


def test_refuses_target_missing_from_base(plain_adapter: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    name = "model.layers.1.self_attn.v_proj.weight"
    with pytest.raises(TensorMismatch, match="layers.1.self_attn.v_proj") as exc:
        list(adapter_deltas(plain_adapter, {k: v for k, v in shapes.items() if k != name}))
    assert exc.value.tensor == name


def test_refuses_shape_mismatch(plain_adapter: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    name = f"{L0}mlp.down_proj.weight"
    with pytest.raises(TensorMismatch, match="shape") as exc:
        list(adapter_deltas(plain_adapter, {**shapes, name: (64, 64)}))
    assert exc.value.tensor == name


def _rewrite(
    src: Path,
    dst: Path,
    edit_tensors: Callable[[dict[str, torch.Tensor]], object] | None = None,
    **config: object,
) -> Path:
    dst.mkdir()
    cfg = json.loads((src / "adapter_config.json").read_text()) | config
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    tensors = load_file(src / "adapter_model.safetensors")
    if edit_tensors is not None:
        edit_tensors(tensors)
    save_file(tensors, dst / "adapter_model.safetensors")
    return dst


def test_refuses_lora_a_without_b(
    plain_adapter: Path, tmp_path: Path, shapes: dict[str, tuple[int, ...]]
) -> None:
    key = f"base_model.model.{L0}self_attn.q_proj.lora_B.weight"
    adapter = _rewrite(plain_adapter, tmp_path / "a", lambda t: t.pop(key))
    with pytest.raises(CorruptCheckpoint, match="q_proj.lora_A.weight` without its `.*q_proj.lora_B"):
        list(adapter_deltas(adapter, shapes))


def test_refuses_non_finite(plain_adapter: Path, tmp_path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    key = f"base_model.model.{L0}self_attn.v_proj.lora_B.weight"
    adapter = _rewrite(plain_adapter, tmp_path / "a", lambda t: t[key].view(-1)[0].fill_(float("nan")))
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        list(adapter_deltas(adapter, shapes))


def test_refuses_other_peft_types(
    plain_adapter: Path, tmp_path: Path, shapes: dict[str, tuple[int, ...]]
) -> None:
    adapter = _rewrite(plain_adapter, tmp_path / "a", peft_type="IA3")
    with pytest.raises(CheckpointError, match="only LORA"):
        list(adapter_deltas(adapter, shapes))


def test_refuses_missing_files(
    plain_adapter: Path, tmp_path: Path, shapes: dict[str, tuple[int, ...]]
) -> None:
    with pytest.raises(CheckpointError, match="adapter_config.json"):
        read_adapter(tmp_path)
    shutil.copy(plain_adapter / "adapter_config.json", tmp_path)
    with pytest.raises(CheckpointError, match="adapter_model.safetensors"):
        list(adapter_deltas(tmp_path, shapes))


LAST = "model.layers.1.self_attn.v_proj"  # sorts last among plain_adapter's modules: all others come first
LAST_A, LAST_B = f"base_model.model.{LAST}.lora_A.weight", f"base_model.model.{LAST}.lora_B.weight"


def _widen_a(t: dict[str, torch.Tensor]) -> None:
    t[LAST_A] = torch.ones(t[LAST_A].shape[0], t[LAST_A].shape[1] + 8)


# (case, tensor edit, config edit, error class, message after "<weights file> ")
BAD_FACTORS: list[tuple[str, Callable[[dict[str, torch.Tensor]], object] | None, dict, type, str]] = [
    ("in-features", _widen_a, {}, TensorMismatch,
     "gives `{LAST}.weight` shape [{out}, {inp8}] (from `{A}` [4, {inp8}] and `{B}` [{out}, 4]), "
     "but the base has [{out}, {inp}]."),
    ("rank", None, {"rank_pattern": {"layers.1.self_attn.v_proj": 2}}, CorruptCheckpoint,
     "has `{A}` of rank 4, but adapter_config.json gives `{LAST}` rank 2."),
    ("unpaired", lambda t: t.pop(LAST_B), {}, CorruptCheckpoint, "has `{A}` without its `{B}`."),
]  # fmt: skip


def _header(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    return json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])


@pytest.mark.parametrize(("case", "edit", "config", "error", "message"), BAD_FACTORS, ids=[c[0] for c in BAD_FACTORS])
def test_bad_factors_are_refused_from_shapes_before_any_product(
    plain_adapter: Path, tmp_path: Path, shapes: dict[str, tuple[int, ...]], monkeypatch: pytest.MonkeyPatch,
    case: str, edit: Callable[[dict[str, torch.Tensor]], object] | None, config: dict, error: type, message: str,
) -> None:  # fmt: skip
    """Factors that do not fit the config or the base are refused before the first B @ A, in words
    that the header alone (what ``install --dry-run hf://…`` reads) reproduces exactly."""
    adapter = _rewrite(plain_adapter, tmp_path / case, edit, **config)
    where = adapter / "adapter_model.safetensors"
    out, inp = shapes[f"{LAST}.weight"]
    want = f"{where} " + message.format(LAST=LAST, A=LAST_A, B=LAST_B, out=out, inp=inp, inp8=inp + 8)
    products: list[str] = []
    real = adapter_mod._lora_delta
    monkeypatch.setattr(adapter_mod, "_lora_delta", lambda f, info, mod, *a: products.append(mod) or real(f, info, mod, *a))
    with pytest.raises(error) as exc:
        next(adapter_deltas(adapter, shapes))
    assert exc.type is error and exc.value.message == want and exc.value.hints
    assert products == []  # refused before any multiplication, though every other module is sound
    with pytest.raises(error) as from_header:
        check_shapes(read_adapter(adapter), header_shapes(_header(where), where), shapes, where=where)
    assert from_header.value.message == want
