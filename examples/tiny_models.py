"""Factory of REAL tiny transformer checkpoints for the quickstart example and the test suite.

Why this module exists
----------------------
tvreg extracts task vectors (tau = theta_finetuned - theta_pretrained) from ordinary Hugging Face model
directories and merges them into a general model G.  Hand-built fake state dicts would let bugs slip
through in exactly the places that matter in practice: safetensors sharding and index files, tied
embeddings (one tensor on disk, two names in memory), bf16/fp16 storage, vocabularies that grew in G,
PEFT/LoRA adapter key naming.  So every checkpoint here is produced by the real libraries
(``transformers``, ``peft``, ``tokenizers``, ``safetensors``) and is trained for a few optimiser steps
so that weights and deltas look like real ones (dense, small, non-zero, not just random noise).

Everything is built in-process, on CPU, with no network access and fixed seeds, and a whole
:class:`Family` builds in a few seconds.  Use it from a session-scoped pytest fixture, e.g.::

    @pytest.fixture(scope="session")
    def family(tmp_path_factory):
        return build_family(tmp_path_factory.mktemp("family"))

Public API
----------
* :func:`make_tokenizer` -- character-level tokenizer (100 tokens) wrapped for ``transformers``.
* :func:`tiny_llama_config` -- 2-layer, 64-wide Llama config (GQA: 4 query heads, 2 kv heads).
* :func:`train_steps` -- a few deterministic AdamW causal-LM steps.
* :func:`save_model_dir` -- write a normal HF model dir in bf16/fp16/fp32, optionally sharded.
* :func:`build_family` -> :class:`Family` -- theta_pre, G, and two skill fine-tunes.
* :func:`make_lora_adapter` / :func:`merged_reference` -- a trained PEFT LoRA adapter and the
  ground-truth merged weights computed by PEFT itself.
* :func:`read_state_dict` -- every tensor of a (possibly sharded) safetensors model dir, dtype kept.

Notes on the library versions this was written against (transformers 5.x, peft 0.21):

* ``transformers.PreTrainedTokenizerFast`` is an alias of ``TokenizersBackend``; ``save_pretrained``
  writes only ``tokenizer.json`` + ``tokenizer_config.json`` (``tokenizer_class: TokenizersBackend``).
* ``PreTrainedModel.save_pretrained`` has no ``safe_serialization`` argument any more (always
  safetensors); unknown kwargs are silently swallowed, so we do not pass it.
* ``save_pretrained`` writes ``config.json["dtype"]`` (not ``torch_dtype``) from the model's dtype.
* ``from_pretrained`` defaults to ``dtype="auto"``: a bf16 dir loads as bf16 unless you pass
  ``dtype=torch.float32``.
* Tied embeddings: only ``model.embed_tokens.weight`` is written; ``lm_head.weight`` is absent on disk
  but present (same storage) in ``model.state_dict()``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

__all__ = [
    "CODING_TEXTS",
    "GENERIC_TEXTS",
    "INSTRUCTION_TEXTS",
    "SCIENCE_TEXTS",
    "Family",
    "build_family",
    "make_lora_adapter",
    "make_tokenizer",
    "merged_reference",
    "read_state_dict",
    "save_model_dir",
    "tiny_llama_config",
    "train_steps",
]

# ---------------------------------------------------------------------------------------------------
# Text sets.  Short (< ~60 chars, the training window) and distinct per skill, so that each fine-tune
# pulls the weights in its own direction and task vectors are genuinely different from each other.
# ---------------------------------------------------------------------------------------------------

GENERIC_TEXTS: list[str] = [
    "The cat sat on the mat.",
    "It was a sunny day in the park.",
    "She walked to the market to buy bread.",
    "The train arrives at nine in the morning.",
    "We had soup and salad for dinner.",
    "Rain fell softly on the old roof.",
    "He read a book by the window.",
    "The children played until it got dark.",
    "A dog barked somewhere down the street.",
    "The meeting was moved to Thursday.",
    "They planted tomatoes in the garden.",
    "The river was cold and very clear.",
    "My phone battery died again today.",
    "The museum opens at ten on weekends.",
    "Coffee tastes better in the morning.",
    "The wind blew the leaves across the yard.",
    "Our neighbours painted their door blue.",
    "The bus was late, so we walked home.",
    "A small boat drifted near the shore.",
    "The library is quiet in the evening.",
    "Snow covered the hills by midnight.",
    "He fixed the bike with a new chain.",
    "The shop sells fresh fruit and cheese.",
    "We watched a film about old sailors.",
    "The baby laughed at the funny noise.",
    "Birds sang in the tall green trees.",
    "The kettle whistled on the stove.",
    "She wrote a letter to her grandmother.",
    "The road curves past the old mill.",
    "Lights flickered during the storm.",
]

INSTRUCTION_TEXTS: list[str] = [
    "User: Say hello.\nBot: Hello! How can I help?",
    "User: Name a colour.\nBot: Blue.",
    "User: What is 2+2?\nBot: 2+2 is 4.",
    "User: Thank you!\nBot: You are welcome.",
    "User: Give me a fruit.\nBot: An apple.",
    "User: Summarise: the cat slept.\nBot: A cat slept.",
    "User: Translate 'hola'.\nBot: It means hello.",
    "User: Is water wet?\nBot: Yes, water is wet.",
    "User: List two pets.\nBot: A dog and a cat.",
    "User: Spell 'sun'.\nBot: S-U-N.",
    "User: What day follows Monday?\nBot: Tuesday.",
    "User: Be brief.\nBot: Understood.",
    "User: Rhyme with 'cat'.\nBot: Hat.",
    "User: Count to three.\nBot: One, two, three.",
    "User: Who are you?\nBot: A small helpful model.",
    "User: Make it shorter.\nBot: Sure, here it is.",
    "User: Pick a number.\nBot: Seven.",
    "User: Goodbye.\nBot: Goodbye, take care!",
    "User: Reverse 'abc'.\nBot: cba.",
    "User: Is 5 odd?\nBot: Yes, 5 is odd.",
    "User: Opposite of hot?\nBot: Cold.",
    "User: Capital of France?\nBot: Paris.",
    "User: Recommend a book.\nBot: Try a classic novel.",
    "User: Fix: teh\nBot: the",
]

SCIENCE_TEXTS: list[str] = [
    "Water boils at 100 degrees Celsius at sea level.",
    "The Earth orbits the Sun once a year.",
    "Light travels at about 300000 km per second.",
    "DNA is a double helix of nucleotides.",
    "Photosynthesis turns CO2 and water into sugar.",
    "An atom has protons, neutrons and electrons.",
    "F = m * a is Newton's second law.",
    "The Moon causes tides on the Earth.",
    "Sound travels faster in water than in air.",
    "Mitochondria make ATP for the cell.",
    "H2O is two hydrogen atoms and one oxygen.",
    "Gravity on Mars is about 38% of Earth's.",
    "Electrons carry a negative charge.",
    "E = m * c^2 relates mass and energy.",
    "The heart pumps blood through arteries.",
    "Iron rusts when it reacts with oxygen.",
    "Plants absorb red and blue light best.",
    "Ice is less dense than liquid water.",
    "Jupiter is the largest planet we know of.",
    "Enzymes speed up chemical reactions.",
    "Absolute zero is -273.15 degrees Celsius.",
    "Neurons send signals with ions.",
    "Carbon forms four covalent bonds.",
    "A light year is a measure of distance.",
]

CODING_TEXTS: list[str] = [
    "def add(a, b):\n    return a + b",
    "for i in range(10):\n    print(i)",
    "import os\nprint(os.getcwd())",
    "x = [n * n for n in range(5)]",
    "if x > 0:\n    y = 1\nelse:\n    y = -1",
    "class Point:\n    def __init__(self):\n        pass",
    "with open(p) as f:\n    data = f.read()",
    "while n > 1:\n    n //= 2",
    "d = {'a': 1, 'b': 2}\nd['c'] = 3",
    "try:\n    run()\nexcept ValueError:\n    pass",
    "def sq(x):\n    return x ** 2",
    "s = ' '.join(words)",
    "nums.sort(key=lambda v: -v)",
    "assert len(xs) == 3",
    "return [k for k, v in d.items() if v]",
    "print(f'{name}: {value}')",
    "a, b = b, a + b",
    "lines = text.splitlines()",
    "total = sum(x for x in xs)",
    "import json\njson.dumps({'k': 1})",
    "def main() -> None:\n    ...",
    "if __name__ == '__main__':\n    main()",
    "xs.append(len(xs))",
    "raise RuntimeError('boom')",
]

# Special tokens of the base vocabulary, in id order (ids 0..3).
_SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<unk>")
_MAX_TRAIN_LEN = 64  # tokens per training sequence (incl. <s>/</s>); << max_position_embeddings

# Step counts used by build_family (kept small so a family builds in seconds on 2 cores).
_PRE_STEPS = 20
_GENERAL_STEPS = 10
_SKILL_STEPS = 8


# ---------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------


def make_tokenizer(path: Path | str | None = None) -> PreTrainedTokenizerFast:
    """Build a tiny character-level tokenizer entirely offline.

    Vocabulary (100 ids): ``<pad>`` = 0, ``<s>`` = 1, ``</s>`` = 2, ``<unk>`` = 3, then the 95 printable
    ASCII characters (space..``~``) and ``\\n``.  One token per character keeps the vocab small
    enough that embed_tokens/lm_head are tiny, while being a real ``tokenizers`` model that round-trips
    through ``save_pretrained``/``AutoTokenizer.from_pretrained``.  Encoding prepends ``<s>``
    (Llama-style); ``</s>`` is appended by :func:`train_steps`, not by the tokenizer.

    If ``path`` is given the tokenizer is also saved there (``tokenizer.json``,
    ``tokenizer_config.json``).
    """
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(_SPECIAL_TOKENS)}
    for ch in [chr(c) for c in range(32, 127)] + ["\n"]:
        vocab[ch] = len(vocab)

    backend = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    # Split every character into its own "word" so WordLevel acts as a character model.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r".|\n"), behavior="isolated")
    backend.decoder = decoders.Fuse()  # concatenate characters back without spaces
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=128,
    )
    if path is not None:
        tokenizer.save_pretrained(str(path))
    return tokenizer


# ---------------------------------------------------------------------------------------------------
# Model config / training / saving
# ---------------------------------------------------------------------------------------------------


def tiny_llama_config(vocab_size: int, *, tie_word_embeddings: bool = False, **overrides) -> LlamaConfig:
    """A 2-layer Llama small enough to train in milliseconds but with every real feature we care about.

    hidden 64, MLP 128, 4 query heads / 2 kv heads (so k_proj/v_proj are 32x64, exercising GQA shape
    differences), RMSNorm, RoPE, max 128 positions.  ``tie_word_embeddings`` switches between the two
    on-disk layouts (separate ``lm_head.weight`` vs. only ``model.embed_tokens.weight``).  Special token
    ids match :func:`make_tokenizer`.  ``overrides`` are passed straight to :class:`LlamaConfig`.
    """
    kwargs: dict = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def _encode_batch(
    texts: list[str], tokenizer: PreTrainedTokenizerFast, max_len: int
) -> dict[str, torch.Tensor]:
    """``<s> text </s>`` per text, right-padded; labels are -100 on padding so it is ignored by the loss."""
    bos = tokenizer.bos_token_id
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rows = []
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)[: max_len - 2]
        rows.append([bos, *ids, eos])
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        attention_mask[i, : len(r)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@contextmanager
def _single_thread() -> Iterator[None]:
    """Run torch ops single-threaded, restoring the previous setting afterwards.

    Why: the matrices here are ~64x128, far too small to gain from intra-op parallelism, while OpenMP
    worker threads on a busy 2-core CI box (other pytest processes, xdist workers) spin and contend --
    measured 0.5 s vs. 25 s for a family build under load.  One thread keeps timings predictable.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_steps(
    model: torch.nn.Module,
    texts: list[str],
    tokenizer: PreTrainedTokenizerFast,
    steps: int,
    lr: float,
    seed: int,
    *,
    batch_size: int = 4,
    max_len: int = _MAX_TRAIN_LEN,
) -> torch.nn.Module:
    """Run ``steps`` AdamW steps of causal-LM training in place and return the model.

    Why: a task vector from real optimiser steps touches every trainable tensor with dense, small,
    correlated updates -- closer to a real fine-tune than adding random noise.  Only parameters with
    ``requires_grad`` are optimised, so this works unchanged for PEFT-wrapped models (LoRA A/B only).

    Deterministic for a given ``seed``: the seed drives both ``torch.manual_seed`` and the batch
    sampler.  Batches of ``batch_size`` texts are drawn from ``texts`` in a seeded random order.
    Runs single-threaded (see :func:`_single_thread`).  The model is left in eval mode.
    """
    if not texts:
        raise ValueError("train_steps needs at least one text")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    order: list[int] = []
    with _single_thread():
        for _ in range(steps):
            if len(order) < batch_size:
                order += torch.randperm(len(texts), generator=gen).tolist()
            idx, order = order[:batch_size], order[batch_size:]
            batch = _encode_batch([texts[i] for i in idx], tokenizer, max_len)
            loss = model(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return model


def save_model_dir(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast | None,
    path: Path | str,
    *,
    dtype: torch.dtype,
    max_shard_size: str | int | None = None,
) -> Path:
    """Write an ordinary Hugging Face model directory with weights stored as ``dtype``.

    Produces ``config.json`` (whose ``dtype`` field names the stored dtype), ``generation_config.json``,
    ``model.safetensors`` -- or ``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``
    when ``max_shard_size`` is small enough (e.g. ``"100KB"`` gives >= 2 shards for the tiny llama)
    -- and the tokenizer files when ``tokenizer`` is given.

    The caller's model is NOT modified: a deep copy is cast and saved, so one in-memory fp32 model can
    be saved in several dtypes.  Tied embeddings are written once (``model.embed_tokens.weight``).
    """
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"unsupported dtype {dtype}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    to_save = copy.deepcopy(model).to(dtype)
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    # transformers 5: always safetensors (no safe_serialization arg); sets config.dtype from model.dtype.
    to_save.save_pretrained(str(path), **kwargs)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path


def _load_fp32(model_dir: Path | str) -> torch.nn.Module:
    """Load a model dir in fp32 regardless of its stored dtype (transformers 5 defaults to dtype='auto')."""
    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)


def read_state_dict(model_dir: Path | str) -> dict[str, torch.Tensor]:
    """Every tensor stored in a (possibly sharded) safetensors model dir, with its on-disk dtype.

    This is "what is on disk", the ground truth tvreg has to deal with: for tied models there is no
    ``lm_head.weight``.  Sharded dirs are read through ``model.safetensors.index.json``.
    """
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (model_dir / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"no safetensors weights in {model_dir}")
    out: dict[str, torch.Tensor] = {}
    for name in files:
        shard = load_file(str(model_dir / name))
        overlap = out.keys() & shard.keys()
        if overlap:
            raise ValueError(f"tensor(s) {sorted(overlap)} appear in more than one shard")
        out.update(shard)
    return out


# ---------------------------------------------------------------------------------------------------
# Family: theta_pre, G, and skill fine-tunes
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """Paths of a built family of related checkpoints (all normal HF model dirs).

    * ``pre`` -- theta_pre: random init (seed 0) + a short generic "pretraining" run.
    * ``general`` -- G: pre + instruction tuning (and possibly ``general_vocab_size - vocab_size``
      extra special tokens, so its embed_tokens/lm_head have more rows than pre's).
    * ``science`` / ``coding`` -- pre fine-tuned on a skill; tau_skill = skill - pre.
    * ``tokenizer`` -- a dir holding pre's tokenizer only (skills share it; G has its own copy).
    """

    root: Path
    pre: Path
    general: Path
    science: Path
    coding: Path
    tokenizer: Path
    vocab_size: int
    general_vocab_size: int
    dtype: torch.dtype
    tie_word_embeddings: bool
    sharded_general: bool


def build_family(
    root: Path | str,
    *,
    dtype: torch.dtype = torch.float32,
    tie_word_embeddings: bool = False,
    extra_general_tokens: int = 0,
    sharded_general: bool = False,
) -> Family:
    """Build theta_pre, G, science and coding checkpoints under ``root`` (a few seconds on CPU).

    Every descendant starts from pre *as saved* (reloaded from disk in fp32), like a real fine-tune
    that starts from the published checkpoint; so with ``dtype=bf16`` the task vectors are computed
    between consistently-rounded checkpoints.  All dirs are saved in ``dtype``.  G is saved with
    ``max_shard_size="100KB"`` (>= 2 shards) when ``sharded_general`` is set.

    G extra tokens: ``extra_general_tokens`` new special tokens ``<extra_i>`` are added to G's tokenizer
    and ``resize_token_embeddings`` grows embed_tokens (and lm_head if untied) before instruction
    tuning; the first ``vocab_size`` rows stay aligned with pre's vocabulary.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    dirs = {name: root / name for name in ("pre", "general", "science", "coding", "tokenizer")}

    tokenizer = make_tokenizer(dirs["tokenizer"])
    vocab_size = len(tokenizer)

    # theta_pre
    torch.manual_seed(0)
    pre = LlamaForCausalLM(tiny_llama_config(vocab_size, tie_word_embeddings=tie_word_embeddings))
    train_steps(pre, GENERIC_TEXTS, tokenizer, steps=_PRE_STEPS, lr=3e-3, seed=0)
    save_model_dir(pre, tokenizer, dirs["pre"], dtype=dtype)

    # G
    general = _load_fp32(dirs["pre"])
    g_tokenizer = tokenizer
    if extra_general_tokens > 0:
        g_tokenizer = make_tokenizer()
        added = g_tokenizer.add_tokens(
            [f"<extra_{i}>" for i in range(extra_general_tokens)], special_tokens=True
        )
        assert added == extra_general_tokens
        torch.manual_seed(1)  # resize's mean-resizing init samples from a normal distribution
        general.resize_token_embeddings(len(g_tokenizer))
    general_texts = list(INSTRUCTION_TEXTS)
    if extra_general_tokens > 0:
        # Make sure the new rows receive gradient, as they would in a real chat-template fine-tune.
        extra = "".join(f"<extra_{i}>" for i in range(extra_general_tokens))
        general_texts = [f"{extra}{t}" for t in general_texts]
    train_steps(general, general_texts, g_tokenizer, steps=_GENERAL_STEPS, lr=2e-3, seed=1)
    save_model_dir(
        general,
        g_tokenizer,
        dirs["general"],
        dtype=dtype,
        max_shard_size="100KB" if sharded_general else None,
    )

    # skills
    for name, texts, seed in (("science", SCIENCE_TEXTS, 2), ("coding", CODING_TEXTS, 3)):
        skill = _load_fp32(dirs["pre"])
        train_steps(skill, texts, tokenizer, steps=_SKILL_STEPS, lr=2e-3, seed=seed)
        save_model_dir(skill, tokenizer, dirs[name], dtype=dtype)

    return Family(
        root=root,
        pre=dirs["pre"],
        general=dirs["general"],
        science=dirs["science"],
        coding=dirs["coding"],
        tokenizer=dirs["tokenizer"],
        vocab_size=vocab_size,
        general_vocab_size=len(g_tokenizer),
        dtype=dtype,
        tie_word_embeddings=tie_word_embeddings,
        sharded_general=sharded_general,
    )


# ---------------------------------------------------------------------------------------------------
# LoRA
# ---------------------------------------------------------------------------------------------------


def make_lora_adapter(
    pre_dir: Path | str,
    out_dir: Path | str,
    texts: list[str],
    *,
    r: int = 4,
    lora_alpha: int = 8,
    use_rslora: bool = False,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
    steps: int = 5,
    seed: int = 0,
    lr: float = 1e-2,
) -> Path:
    """Train a real PEFT LoRA adapter on top of ``pre_dir`` and save it to ``out_dir``.

    PEFT's default init sets lora_B = 0, i.e. delta = 0; the few training steps make the adapter's
    delta (scale * B @ A, scale = alpha/r or alpha/sqrt(r) with rsLoRA) non-zero.  Writes
    ``adapter_config.json`` + ``adapter_model.safetensors`` whose keys look like
    ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` (no adapter name in the key).
    ``adapter_config.json["base_model_name_or_path"]`` is ``str(pre_dir)``.
    """
    from peft import LoraConfig, get_peft_model

    pre_dir = Path(pre_dir)
    out_dir = Path(out_dir)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(pre_dir))
    base = _load_fp32(pre_dir)
    torch.manual_seed(seed)  # lora_A init is random
    config = LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        use_rslora=use_rslora,
        target_modules=list(target_modules),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    train_steps(model, texts, tokenizer, steps=steps, lr=lr, seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    return out_dir


def merged_reference(pre_dir: Path | str, adapter_dir: Path | str) -> dict[str, torch.Tensor]:
    """Ground truth for LoRA installation: PEFT's own ``merge_and_unload`` of adapter into pre, in fp32.

    Returned tensors are cloned (independent of the model).  Note this is the *in-memory* state dict,
    so for tied-embedding models it contains ``lm_head.weight`` too, unlike :func:`read_state_dict`.
    """
    from peft import PeftModel

    base = _load_fp32(pre_dir)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    return {k: v.detach().to(torch.float32).clone() for k, v in merged.state_dict().items()}
