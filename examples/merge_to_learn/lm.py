"""Fine-tuning and scoring of the whole model on CPU, made affordable by bf16 and shared prompts.

Every decoder layer and the final norm train (full fine-tuning). The tied embedding /
output matrix stays θ_pre's: it is a quarter of SmolLM2-135M's parameters, its AdamW
state would not pay for itself on two cores, and a task vector is then exactly zero there.

Speed, measured on the two shared cores this was built on: a bf16 forward pass runs
2–4x faster than fp32 (the CPU has AVX512-BF16), so training uses ``torch.autocast``
(fp32 master weights, bf16 matmuls) and scoring loads the model in bf16 with the
log-softmax in fp32. A multiple-choice item's prompt is encoded once and its options
continue from the prompt's key/value cache (:func:`option_logprobs`), which halves the
tokens scored; :func:`self_check` compares that path with plain full-sequence scoring.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

CHAT = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
END = "<|im_end|>"


def load(model_dir: Path, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    model.eval()
    return model, tok


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False).input_ids


def encode_pairs(tok, pairs: Sequence[tuple[str, str]], max_len: int) -> list[tuple[list[int], int]]:
    """(ids, answer_start) per (prompt, answer); prompt and answer tokenized apart so the boundary is exact."""
    out = []
    for prompt, answer in pairs:
        p = _ids(tok, CHAT.format(prompt=prompt))
        a = _ids(tok, answer)
        if len(p) + len(a) > max_len:  # keep the answer; cut the prompt's start
            a = a[: max_len // 2]
            p = p[len(p) + len(a) - max_len :]
        out.append((p + a, len(p)))
    return out


def _pad(seqs: list[list[int]], pad: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        span = slice(n - len(s), n) if left else slice(0, len(s))
        ids[i, span] = torch.tensor(s)
        mask[i, span] = 1
    return ids, mask


def _pad_id(tok) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else 0


def train(
    model,
    tok,
    pairs: Sequence[tuple[str, str]],
    *,
    steps: int,
    lr: float,
    batch: int,
    seed: int,
    max_len: int,
    ascent: bool = False,
    log=print,
) -> list[float]:
    """AdamW on every decoder layer and the final norm; loss on answer tokens only; bf16 autocast.

    Returns the loss per step. ``seed`` picks the minibatches (and dropout-free training is
    otherwise deterministic), so three seeds are three different data orders. ``ascent``
    *raises* the loss instead (gradient-ascent unlearning): how the example builds a skill
    that opposes another on purpose (see ``tasks.comply``).
    """
    torch.manual_seed(seed)
    rng = random.Random(seed)
    seqs = encode_pairs(tok, pairs, max_len)
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for p in model.model.layers.parameters()] + list(model.model.norm.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    model.train()
    losses = []
    started = time.monotonic()
    order: list[int] = []
    for step in range(steps):
        if len(order) < batch:
            fresh = list(range(len(seqs)))
            rng.shuffle(fresh)
            order += fresh
        pick, order = order[:batch], order[batch:]
        ids, mask = _pad([seqs[i][0] for i in pick], _pad_id(tok))
        labels = torch.full_like(ids, -100)
        for r, i in enumerate(pick):
            s, start = seqs[i]
            labels[r, start : len(s)] = ids[r, start : len(s)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        rows, cols = torch.nonzero(labels[:, 1:] != -100, as_tuple=True)
        logits = model.lm_head(h[rows, cols].float())
        loss = nn.functional.cross_entropy(logits, labels[rows, cols + 1])
        (-loss if ascent else loss).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 4 == 0 or step == steps - 1:
            log(f"    step {step + 1}/{steps}  loss {loss.item():.3f}  ({time.monotonic() - started:.0f} s)")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return losses


def _hidden_rows(model, tok, seqs: list[tuple[list[int], int]], batch: int):
    """(index, last hidden states) of each sequence, batched by length; call under ``torch.no_grad()``."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    for b in range(0, len(order), batch):
        idx = order[b : b + batch]
        ids, mask = _pad([seqs[i][0] for i in idx], _pad_id(tok))
        h = model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        for r, i in enumerate(idx):
            yield i, h[r]


def sequence_logprobs(model, tok, seqs: list[tuple[list[int], int]], batch: int = 32) -> list[float]:
    """Sum of log-probabilities of each sequence's answer tokens, one full forward pass per sequence."""
    scores = [0.0] * len(seqs)
    with torch.no_grad():
        for i, h in _hidden_rows(model, tok, seqs, batch):
            s, start = seqs[i]
            logp = torch.log_softmax(model.lm_head(h[max(start, 1) - 1 : len(s) - 1]).float(), -1)
            scores[i] = float(logp.gather(1, torch.tensor(s[max(start, 1) :])[:, None]).sum())
    return scores


def option_logprobs(model, tok, prompts: list[str], options: list[list[str]], batch: int = 16) -> list[list[float]]:
    """Summed log-probability of each option's tokens after its prompt, prompts encoded once.

    Prompts are left-padded into one batch and run with a key/value cache; the cache is
    repeated once per option and the options (right-padded) continue from it with the
    positions they would have had in the full sequence. The tokens every option of an item
    starts with ("186 + 177 = 36…") join the prompt side: their log-probability is the same
    for every option, so it is left out of each option's score, and rankings and margins
    (differences between options) are exactly those of full-sequence scoring, up to float
    rounding (see :func:`self_check`, which compares the differences).
    """
    from transformers import DynamicCache

    pad = _pad_id(tok)
    out: list[list[float]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    with torch.no_grad():
        for b in range(0, len(order), batch):
            idx = order[b : b + batch]
            n_opt = len(options[idx[0]])
            assert all(len(options[i]) == n_opt for i in idx)
            heads, opts = [], []
            for i in idx:
                toks = [_ids(tok, o) for o in options[i]]
                c = _common_prefix(toks)
                heads.append(_ids(tok, CHAT.format(prompt=prompts[i])) + toks[0][:c])
                opts += [t[c:] for t in toks]
            p_ids, p_mask = _pad(heads, pad, left=True)
            p_pos = (p_mask.cumsum(-1) - 1).clamp(min=0)
            cache = DynamicCache()
            res = model.model(input_ids=p_ids, attention_mask=p_mask, position_ids=p_pos,
                              past_key_values=cache, use_cache=True)  # fmt: skip
            last = torch.log_softmax(model.lm_head(res.last_hidden_state[:, -1]).float(), -1)
            cache.batch_repeat_interleave(n_opt)
            o_ids, o_mask = _pad(opts, pad)
            mask = torch.cat([p_mask.repeat_interleave(n_opt, 0), o_mask], 1)
            o_pos = p_pos[:, -1:].repeat_interleave(n_opt, 0) + 1 + torch.arange(o_ids.shape[1])[None]
            h = model.model(input_ids=o_ids, attention_mask=mask, position_ids=o_pos,
                            past_key_values=cache, use_cache=True).last_hidden_state  # fmt: skip
            logp = torch.log_softmax(model.lm_head(h).float(), -1)
            for r, toks in enumerate(opts):
                first = float(last[r // n_opt, toks[0]])
                rest = logp[r, : len(toks) - 1].gather(1, torch.tensor(toks[1:], dtype=torch.long)[:, None])
                out[idx[r // n_opt]].append(first + float(rest.sum()))
    return out


def _common_prefix(toks: list[list[int]]) -> int:
    """Tokens all options share at their start, keeping at least one token of each option."""
    c = 0
    while c < min(len(t) for t in toks) - 1 and all(t[c] == toks[0][c] for t in toks):
        c += 1
    return c


def starts_with(model, tok, prompts: list[str], prefix: str, batch: int = 32) -> list[bool]:
    """Whether greedy decoding of each prompt's answer starts with ``prefix`` (teacher-forced argmax)."""
    seqs = encode_pairs(tok, [(p, prefix) for p in prompts], 10_000)
    out = [False] * len(seqs)
    with torch.no_grad():
        for i, h in _hidden_rows(model, tok, seqs, batch):
            s, start = seqs[i]
            best = model.lm_head(h[start - 1 : len(s) - 1]).argmax(-1)
            out[i] = bool((best == torch.tensor(s[start:])).all())
    return out


def save(model, tok, out: Path) -> None:
    """Write an HF model directory atomically (beside it, then renamed)."""
    import shutil

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def self_check(model, tok) -> float:
    """Max |Δ| between shared-prompt and full-sequence scoring of option differences (what ranking uses)."""
    prompts = ["What is the capital of France?", "What is 186 + 177?"]
    options = [["Paris.", "The capital is Rome.", "Berlin"], ["186 + 177 = 363.", "186 + 177 = 364.", "186 + 177 = 353."]]
    shared = option_logprobs(model, tok, prompts, options)
    plain = sequence_logprobs(model, tok, encode_pairs(tok, [(p, o) for p, os in zip(prompts, options, strict=True) for o in os],
                                                       10_000))  # fmt: skip
    diffs = []
    for k, row in enumerate(shared):
        full = plain[3 * k : 3 * k + 3]
        diffs += [abs((row[j] - row[0]) - (full[j] - full[0])) for j in (1, 2)]
    return max(diffs)
