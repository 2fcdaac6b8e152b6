"""Fine-tuning and scoring on CPU, made affordable by training only the top layers.

Why: on two shared CPU cores a full fine-tuning step of SmolLM2-135M takes tens of
seconds. Every model in this example (θ_pre, G, the experts, CFT and every merge)
trains or changes only the top ``top_layers`` decoder layers and the final norm; the
embeddings and the bottom layers stay θ_pre's, bit for bit (a task vector is exactly
zero there, so θ_G + Σ ω τ keeps them too). The bottom's output for a batch of text is
therefore the same for every model: it is computed once, cached on disk under a hash
of the bottom weights, and each training step or evaluation runs only the top. The
cache is keyed by content, so a model whose bottom differs just computes everything.

The split is done with the model's own modules: the bottom is ``model.model`` with
``layers[:k]`` and no final norm; the top is ``model.model`` fed ``inputs_embeds``
with ``layers[k:]``. Rotary positions and the causal mask are rebuilt by the model
itself, so the logits equal the full model's (checked in :func:`self_check`).
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

CHAT = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
END = "<|im_end|>"


def load(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    return model, tok


def encode_pairs(tok, pairs: Sequence[tuple[str, str]], max_len: int) -> list[tuple[list[int], int]]:
    """(ids, answer_start) per (prompt, answer); prompt and answer tokenized apart so the boundary is exact."""
    out = []
    for prompt, answer in pairs:
        p = tok(CHAT.format(prompt=prompt), add_special_tokens=False).input_ids
        a = tok(answer, add_special_tokens=False).input_ids
        if len(p) + len(a) > max_len:  # keep the answer; cut the prompt's start
            a = a[: max_len // 2]
            p = p[len(p) + len(a) - max_len :]
        out.append((p + a, len(p)))
    return out


def _pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def bottom_hash(model, k: int) -> str:
    """SHA-256 over the tensors the bottom uses (embeddings and layers[:k])."""
    h = hashlib.sha256()
    h.update(str(k).encode())
    tensors = [("embed", model.model.embed_tokens.weight)]
    tensors += [(n, p) for i in range(k) for n, p in model.model.layers[i].named_parameters()]
    for name, t in tensors:
        h.update(name.encode())
        h.update(t.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@contextmanager
def _layers(model, part: slice, final_norm: bool):
    inner = model.model
    layers, norm = inner.layers, inner.norm
    inner.layers = nn.ModuleList(list(layers)[part])
    if not final_norm:
        inner.norm = nn.Identity()
    try:
        yield inner
    finally:
        inner.layers, inner.norm = layers, norm


class Encoded:
    """A set of sequences with the bottom's hidden states, grouped in length-sorted batches."""

    def __init__(
        self, seqs: list[tuple[list[int], int]], batches: list[tuple[list[int], torch.Tensor, torch.Tensor]]
    ):
        self.seqs = seqs
        self.batches = batches  # (indices, hidden [B,T,H], mask [B,T])


def bottom_states(model, tok, seqs, k: int, cache_dir: Path | None, tag: str, batch: int = 16) -> Encoded:
    """The bottom's outputs for ``seqs``, from the cache when this bottom and these sequences were seen."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    key = hashlib.sha256(repr([s for s in seqs]).encode()).hexdigest()[:16]
    path = None
    if cache_dir is not None:
        path = cache_dir / f"{tag}-{bottom_hash(model, k)[:16]}-{key}.pt"
        if path.is_file():
            return Encoded(seqs, torch.load(path))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    batches = []
    with torch.no_grad(), _layers(model, slice(0, k), final_norm=False) as inner:
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            ids, mask = _pad([seqs[i][0] for i in idx], pad)
            hidden = inner(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            batches.append((idx, hidden.contiguous(), mask))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(batches, tmp)
        tmp.replace(path)
    return Encoded(seqs, batches)


def top_hidden(model, hidden: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    with _layers(model, slice(k, None), final_norm=True) as inner:
        return inner(inputs_embeds=hidden, attention_mask=mask, use_cache=False).last_hidden_state


def _targets(enc: Encoded, idx: list[int], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row, the positions whose next token is an answer token, and those tokens."""
    rows, cols, toks = [], [], []
    for r, i in enumerate(idx):
        ids, start = enc.seqs[i]
        for t in range(max(start, 1), len(ids)):
            rows.append(r)
            cols.append(t - 1)
            toks.append(ids[t])
    as_long = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return (as_long(rows), as_long(cols)), as_long(toks)


def answer_logprobs(model, enc: Encoded, k: int) -> list[float]:
    """Sum of log-probabilities of each sequence's answer tokens."""
    scores = [0.0] * len(enc.seqs)
    with torch.no_grad():
        for idx, hidden, mask in enc.batches:
            h = top_hidden(model, hidden, mask, k)
            (rows, cols), toks = _targets(enc, idx, h.shape[1])
            logp = torch.log_softmax(model.lm_head(h[rows, cols]).float(), -1)
            picked = logp.gather(1, toks[:, None])[:, 0]
            for r, v in zip(rows.tolist(), picked.tolist(), strict=True):
                scores[idx[r]] += v
    return scores


def answer_is_greedy(model, enc: Encoded, k: int) -> list[bool]:
    """Whether greedy decoding would produce each sequence's answer tokens (teacher-forced argmax check)."""
    ok = [True] * len(enc.seqs)
    with torch.no_grad():
        for idx, hidden, mask in enc.batches:
            h = top_hidden(model, hidden, mask, k)
            (rows, cols), toks = _targets(enc, idx, h.shape[1])
            best = model.lm_head(h[rows, cols]).argmax(-1)
            for r, match in zip(rows.tolist(), (best == toks).tolist(), strict=True):
                ok[idx[r]] = ok[idx[r]] and match
    return ok


def train_top(
    model,
    enc: Encoded,
    k: int,
    *,
    steps: int,
    lr: float,
    batch: int,
    seed: int,
    params: list[nn.Parameter] | None = None,
    log=print,
) -> list[float]:
    """AdamW on ``params`` (default: layers[k:] and the final norm), loss on answer tokens only.

    Returns the loss per step. LoRA passes its adapter factors as ``params`` (see :func:`add_lora`).
    """
    torch.manual_seed(seed)
    rng = random.Random(seed)
    for p in model.parameters():
        p.requires_grad_(False)
    if params is None:
        params = [p for layer in list(model.model.layers)[k:] for p in layer.parameters()]
        params += list(model.model.norm.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    # Flatten the cached batches into single rows so we can draw random minibatches.
    rows = [
        (i, hidden[j, : int(mask[j].sum())]) for idx, hidden, mask in enc.batches for j, i in enumerate(idx)
    ]
    model.train()
    losses = []
    started = time.monotonic()
    for step in range(steps):
        pick = rng.sample(rows, min(batch, len(rows)))
        width = max(h.shape[0] for _, h in pick)
        hidden = torch.zeros(len(pick), width, pick[0][1].shape[-1])
        mask = torch.zeros(len(pick), width, dtype=torch.long)
        for r, (_, h) in enumerate(pick):
            hidden[r, : h.shape[0]] = h
            mask[r, : h.shape[0]] = 1
        idx = [i for i, _ in pick]
        h = top_hidden(model, hidden, mask, k)
        (rr, cc), toks = _targets(enc, idx, width)
        loss = nn.functional.cross_entropy(model.lm_head(h[rr, cc]).float(), toks)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 10 == 0 or step == steps - 1:
            log(f"    step {step + 1}/{steps}  loss {loss.item():.3f}  ({time.monotonic() - started:.0f} s)")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return losses


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def add_lora(model, k: int, *, r: int, alpha: float):
    """Wrap every linear layer of layers[k:] in a PEFT LoRA adapter (in place); returns (peft model, params).

    The same layers as full fine-tuning, so the two differ only in how the update is parameterised;
    ``model`` itself keeps working (with the adapter active) for :func:`train_top` and scoring.
    """
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGETS),
        layers_to_transform=list(range(k, len(model.model.layers))),
    )
    peft_model = get_peft_model(model, cfg)
    params = [p for n, p in peft_model.named_parameters() if "lora_" in n]
    return peft_model, params


def save_lora(peft_model, tok, adapter_dir: Path, merged_dir: Path) -> None:
    """Write the PEFT adapter (what ``tvreg build --adapter`` reads) and the merged model (what is scored)."""
    import shutil

    tmp = adapter_dir.with_name(adapter_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(tmp)
    shutil.rmtree(adapter_dir, ignore_errors=True)
    tmp.rename(adapter_dir)
    save(peft_model.merge_and_unload(), tok, merged_dir)


def save(model, tok, out: Path) -> None:
    """Write an HF model directory atomically (beside it, then renamed)."""
    import shutil

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def self_check(model, tok, k: int) -> float:
    """Max |logit difference| between the split (bottom + top) and the whole model on one prompt."""
    seqs = encode_pairs(tok, [("What is the capital of France?", "Paris.")], 64)
    enc = bottom_states(model, tok, seqs, k, None, "check")
    idx, hidden, mask = enc.batches[0]
    with torch.no_grad():
        split = model.lm_head(top_hidden(model, hidden, mask, k))
        whole = model(input_ids=torch.tensor([seqs[0][0]]), use_cache=False).logits
    return float((split - whole).abs().max())
