"""Batched generation for both families: greedy / temperature / top-k / top-p, EOS stop, KV cache.

Prompts of different lengths are batched together:

* DecLLM: prompts are left-padded; an attention mask hides the padding keys and RoPE positions
  start at 0 on each prompt's first real token, so every row computes exactly what it would alone.
  ``bos`` is prepended, matching training (every training sequence starts with ``bos``). A model
  tuned with ``bidirectional_prefix`` ("DecLLM + BiAttn", recorded in its config) attends the
  prompt (bos + prompt tokens) bidirectionally, as in its training; generated tokens stay causal.
* RedLLM: prompts go right-padded into the encoder (with their lengths); the decoder starts from
  ``bos`` at position ``k`` (the prompt length) and the cross-attention K/V are computed once.

With ``use_cache=False`` every step re-runs the whole sequence; the tokens are identical to the
cached path (tested), which is the point of keeping that slow path around.

With ``compile=True`` the prompt is processed as usual, then every new token goes through one
compiled function over a *static* KV cache (``KVCache.write``): the cache slot, the RoPE positions
and the key-validity mask are device tensors and attention reads all ``max_len`` slots, so each
step has the same shapes and one graph serves them all -- on CUDA a CUDA graph
(``torch.compile(mode="reduce-overhead")``), elsewhere plain ``torch.compile``. No host value is
read inside a step; whether every row has finished is checked every ``DONE_CHECK_EVERY`` steps.
The tokens are those of the eager paths (tested, greedy and seeded sampling, ragged batches).

A prompt plus ``max_new_tokens`` longer than the model's trained context (``config.max_seq_len``)
is allowed -- RoPE extrapolates -- but warned about (:class:`ContextLengthWarning`).
"""
from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, TextIO

import torch

from .config import ModelConfig
from .models import DecLLM, RedLLM
from .models.base import LanguageModel


@dataclass
class SamplingOptions:
    """How to pick each next token.

    Args:
        max_new_tokens: upper bound on generated tokens per prompt.
        temperature: 0 = greedy; > 0 scales the logits before sampling.
        top_k: keep only the k most likely tokens (None = all).
        top_p: nucleus sampling, keep the smallest set with cumulative probability >= top_p, in (0, 1].
        seed: seed of the sampling generator (None = torch's global RNG).
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if self.temperature < 0 or self.temperature != self.temperature:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None, got {self.top_k!r}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def sample_next(logits: torch.Tensor, opts: SamplingOptions, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """logits (B, V) -> next token ids (B,)."""
    logits = logits.float()
    if opts.temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits / opts.temperature
    if opts.top_k is not None and opts.top_k < logits.shape[-1]:
        kth = torch.topk(logits, opts.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if opts.top_p is not None and opts.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the mass before it already reaches top_p (the top token always stays)
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= opts.top_p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _check_prompts(prompts: Sequence[Sequence[int]]) -> None:
    if len(prompts) == 0:
        raise ValueError("generate needs at least one prompt")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty")


class ContextLengthWarning(UserWarning):
    """Generation runs past the context length the model was trained for."""


def context_overflow(config: ModelConfig, prompt_lengths: Sequence[int], max_new_tokens: int, *,
                     add_bos: bool = True) -> Optional[str]:
    """One-line explanation when the longest prompt + ``max_new_tokens`` exceeds ``config.max_seq_len``
    (the trained context), else None. A DecLLM prompt counts its prepended bos."""
    longest = max(prompt_lengths)
    bos = 1 if add_bos and config.family == "decllm" else 0
    total = longest + bos + max_new_tokens
    if total <= config.max_seq_len:
        return None
    return (f"the longest prompt ({longest} tokens{' + bos' if bos else ''}) + max_new_tokens {max_new_tokens} "
            f"= {total} tokens exceeds the model's trained context of {config.max_seq_len} tokens "
            "(config max_seq_len); RoPE extrapolates past it, but expect the output to degrade")


class ProgressPrinter:
    """A ``progress`` callback for :func:`generate` that prints ``<prefix>: 256/1000 new tokens
    (41.3 tok/s)`` to ``file`` (stderr) every ``every`` tokens, and at least every ``seconds``
    seconds, so a long generation shows it is working. Nothing is printed for short ones."""

    def __init__(self, total: int, prefix: str = "generate", every: int = 256, seconds: float = 10.0,
                 file: Optional[TextIO] = None):
        if every < 1:
            raise ValueError(f"ProgressPrinter every must be >= 1 token, got {every}")
        self.total, self.prefix, self.every, self.seconds = total, prefix, every, seconds
        self.file = file
        self.start = self.last = time.monotonic()

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if done % self.every and now - self.last < self.seconds:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        print(f"{self.prefix}: {done}/{self.total} new tokens ({rate:.1f} tok/s)", file=self.file or sys.stderr,
              flush=True)


def _finish(tokens: torch.Tensor, eos_id: Optional[int]) -> list[list[int]]:
    out = []
    for row in tokens.tolist():
        if eos_id is not None and eos_id in row:
            row = row[: row.index(eos_id)]
        out.append(row)
    return out


@torch.no_grad()
def generate(model: LanguageModel, prompts: Sequence[Sequence[int]], *, bos_id: int,
             eos_id: Optional[int], pad_id: int = 0, options: Optional[SamplingOptions] = None,
             use_cache: bool = True, add_bos: bool = True,
             progress: Optional[Callable[[int], None]] = None, compile: bool = False) -> list[list[int]]:
    """Generate continuations (token ids, EOS excluded) for a batch of token-id prompts.

    ``progress(n)`` is called after each step with the number of tokens generated per prompt so far
    (e.g. a :class:`ProgressPrinter`). Warns :class:`ContextLengthWarning` when a prompt +
    ``max_new_tokens`` exceeds the trained context. ``compile``: decode with a static KV cache and
    a compiled one-token step (see the module docstring); the first call pays the compilation.
    """
    opts = options or SamplingOptions()
    _check_prompts(prompts)
    if compile and not use_cache:
        raise ValueError("compile=True decodes with a (static) KV cache; it cannot be combined with use_cache=False")
    overflow = context_overflow(model.config, [len(p) for p in prompts], opts.max_new_tokens, add_bos=add_bos)
    if overflow:
        warnings.warn(overflow, ContextLengthWarning, stacklevel=2)
    was_training = model.training
    model.eval()
    try:
        gen = None
        device = model.embed.weight.device
        if opts.seed is not None:
            gen = torch.Generator(device=device).manual_seed(opts.seed)
        if isinstance(model, RedLLM) and compile:
            tokens = _static_redllm(model, prompts, bos_id, eos_id, pad_id, opts, gen, progress)
        elif isinstance(model, DecLLM) and compile:
            tokens = _static_decllm(model, prompts, bos_id, eos_id, pad_id, opts, gen, add_bos, progress)
        elif isinstance(model, RedLLM):
            tokens = _generate_redllm(model, prompts, bos_id, eos_id, pad_id, opts, use_cache, gen, progress)
        elif isinstance(model, DecLLM):
            tokens = _generate_decllm(model, prompts, bos_id, eos_id, pad_id, opts, use_cache, gen, add_bos,
                                      progress)
        else:
            raise ValueError(f"generate supports DecLLM and RedLLM, got {type(model).__name__}")
    finally:
        model.train(was_training)
    return _finish(tokens, eos_id)


def _step_done(next_tok: torch.Tensor, done: torch.Tensor, eos_id: Optional[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    next_tok = torch.where(done, torch.full_like(next_tok, pad_id), next_tok)
    if eos_id is not None:
        done = done | (next_tok == eos_id)
    return next_tok, done


def _left_padded(model: DecLLM, prompts, bos_id, pad_id, add_bos):
    """(ids, mask, prefix_lengths or None) of a DecLLM prompt batch, left-padded, on the model's device."""
    device = model.embed.weight.device
    rows = [([bos_id] if add_bos else []) + list(p) for p in prompts]
    b, p_len = len(rows), max(len(r) for r in rows)
    ids = torch.full((b, p_len), pad_id, dtype=torch.long)
    mask = torch.zeros((b, p_len), dtype=torch.bool)
    for i, r in enumerate(rows):  # left padding, built on the host: one transfer
        ids[i, p_len - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, p_len - len(r):] = True
    prefix = None
    if model.config.bidirectional_prefix:  # counted from each row's first real token
        prefix = torch.tensor([len(r) for r in rows], dtype=torch.long, device=device)
    return ids.to(device), mask.to(device), prefix


def _generate_decllm(model: DecLLM, prompts, bos_id, eos_id, pad_id, opts, use_cache, gen, add_bos,
                     progress) -> torch.Tensor:
    device = model.embed.weight.device
    ids, mask, prefix = _left_padded(model, prompts, bos_id, pad_id, add_bos)
    b, p_len = ids.shape
    done = torch.zeros(b, dtype=torch.bool, device=device)
    out = []
    cache = model.init_cache(b, p_len + opts.max_new_tokens) if use_cache else None
    logits = model(ids, attention_mask=mask, prefix_lengths=prefix, cache=cache, return_logits="last").logits[:, -1]
    for step in range(opts.max_new_tokens):
        nxt, done = _step_done(sample_next(logits, opts, gen), done, eos_id, pad_id)
        out.append(nxt)
        if progress is not None:
            progress(step + 1)
        if bool(done.all()) or step == opts.max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((b, 1), dtype=torch.bool, device=device)], dim=1)
        if use_cache:
            logits = model(nxt.unsqueeze(1), attention_mask=mask, cache=cache, return_logits="last").logits[:, -1]
        else:
            ids = torch.cat([ids, nxt.unsqueeze(1)], dim=1)
            logits = model(ids, attention_mask=mask, prefix_lengths=prefix, return_logits="last").logits[:, -1]
    return torch.stack(out, dim=1)


def _right_padded(model: RedLLM, prompts, pad_id):
    """(encoder ids (B, S), lengths (B,)) of a RedLLM prompt batch, right-padded: built on the host,
    moved to the model's device in one transfer each."""
    device = model.embed.weight.device
    ids = torch.full((len(prompts), max(len(p) for p in prompts)), pad_id, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = torch.tensor(list(p), dtype=torch.long)
    return ids.to(device), torch.tensor([len(p) for p in prompts], dtype=torch.long, device=device)


def _generate_redllm(model: RedLLM, prompts, bos_id, eos_id, pad_id, opts, use_cache, gen,
                     progress) -> torch.Tensor:
    device = model.embed.weight.device
    enc_ids, lengths = _right_padded(model, prompts, pad_id)
    b = enc_ids.shape[0]
    enc = model.encode(enc_ids, lengths)
    dec = torch.full((b, 1), bos_id, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    cache = model.init_cache(b, opts.max_new_tokens + 1) if use_cache else None
    # decode through forward (not .decode): sharding wrappers gather the tied head for forward
    logits = model(None, dec, encoder_outputs=enc, cache=cache, return_logits="last").logits[:, -1]
    out = []
    for step in range(opts.max_new_tokens):
        nxt, done = _step_done(sample_next(logits, opts, gen), done, eos_id, pad_id)
        out.append(nxt)
        if progress is not None:
            progress(step + 1)
        if bool(done.all()) or step == opts.max_new_tokens - 1:
            break
        if use_cache:
            logits = model(None, nxt.unsqueeze(1), encoder_outputs=enc, cache=cache, return_logits="last").logits[:, -1]
        else:
            dec = torch.cat([dec, nxt.unsqueeze(1)], dim=1)
            logits = model(None, dec, encoder_outputs=enc, return_logits="last").logits[:, -1]
    return torch.stack(out, dim=1)


# ---------------------------------------------------------------------- static cache, compiled step

#: the compiled static path reads "has every row finished?" on the host once per this many steps
DONE_CHECK_EVERY = 8

_COMPILED: dict[tuple[str, str], Callable] = {}


def _decllm_step(model: DecLLM, ids, positions, key_mask, cache, index):
    return model(ids, positions=positions, attention_mask=key_mask, cache=cache, cache_index=index,
                 return_logits="last").logits[:, -1]


def _redllm_step(model: RedLLM, ids, enc, cache, index):
    return model(None, ids, encoder_outputs=enc, cache=cache, cache_index=index, return_logits="last").logits[:, -1]


def compiled_step(family: str, device: torch.device) -> Callable:
    """The compiled one-token step of a family: ``mode="reduce-overhead"`` (CUDA graphs) on CUDA,
    default inductor elsewhere; ``fullgraph=True`` (a graph break would be an error, not a silent
    slowdown) and static shapes. Compiled once per process; guards recompile for another model,
    batch size or cache length."""
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    key = (family, mode)
    if key not in _COMPILED:
        fn = _decllm_step if family == "decllm" else _redllm_step
        _COMPILED[key] = torch.compile(fn, mode=mode, fullgraph=True, dynamic=False)
    return _COMPILED[key]


def _mark_static(*tensors: Optional[torch.Tensor]) -> None:
    # the cache is written in place inside the step: a CUDA graph must see the same addresses
    for t in tensors:
        if t is not None:
            torch._dynamo.mark_static_address(t)


def _static_loop(first_logits, step, opts, gen, eos_id, pad_id, progress, advance) -> torch.Tensor:
    """Sample, stop when every row is done (checked every DONE_CHECK_EVERY steps), call ``step``."""
    b = first_logits.shape[0]
    done = torch.zeros(b, dtype=torch.bool, device=first_logits.device)
    logits, out = first_logits, []
    for i in range(opts.max_new_tokens):
        nxt, done = _step_done(sample_next(logits, opts, gen), done, eos_id, pad_id)
        out.append(nxt)
        if progress is not None:
            progress(i + 1)
        if i == opts.max_new_tokens - 1:
            break
        if eos_id is not None and (i + 1) % DONE_CHECK_EVERY == 0 and bool(done.all()):
            break
        torch.compiler.cudagraph_mark_step_begin()
        logits = step(nxt.unsqueeze(1)).clone()  # clone: a CUDA-graph output is overwritten by the next replay
        advance()
    return torch.stack(out, dim=1)


def _static_decllm(model: DecLLM, prompts, bos_id, eos_id, pad_id, opts, gen, add_bos, progress) -> torch.Tensor:
    device = model.embed.weight.device
    ids, mask, prefix = _left_padded(model, prompts, bos_id, pad_id, add_bos)
    b, p_len = ids.shape
    max_len = p_len + opts.max_new_tokens
    cache = model.init_cache(b, max_len)
    for c in cache:
        _mark_static(c.k, c.v)
    # the prompt: the ordinary cached forward (its own shapes), filling slots [0, p_len)
    logits = model(ids, attention_mask=mask, prefix_lengths=prefix, cache=cache, return_logits="last").logits[:, -1]
    key_mask = torch.zeros((b, max_len), dtype=torch.bool, device=device)
    key_mask[:, :p_len] = mask
    positions = mask.sum(dim=1, keepdim=True)  # (B, 1): the next real token's RoPE position
    index = torch.full((1,), p_len, dtype=torch.long, device=device)  # its cache slot
    model.rope_tables(positions, max_position=max_len - 1)  # build the tables before tracing
    fn = compiled_step("decllm", device)

    def step(tok):
        key_mask.index_fill_(1, index, True)
        return fn(model, tok, positions, key_mask, cache, index)

    def advance():
        positions.add_(1)
        index.add_(1)

    return _static_loop(logits, step, opts, gen, eos_id, pad_id, progress, advance)


def _static_redllm(model: RedLLM, prompts, bos_id, eos_id, pad_id, opts, gen, progress) -> torch.Tensor:
    device = model.embed.weight.device
    enc_ids, lengths = _right_padded(model, prompts, pad_id)
    b, s = enc_ids.shape
    enc = model.encode(enc_ids, lengths)
    cache = model.init_cache(b, opts.max_new_tokens)
    for c in cache.self_attn:
        _mark_static(c.k, c.v)
    dec = torch.full((b, 1), bos_id, dtype=torch.long, device=device)
    # bos: the ordinary cached forward fills slot 0 and the cross-attention K/V (computed once)
    logits = model(None, dec, encoder_outputs=enc, cache=cache, return_logits="last").logits[:, -1]
    for c in cache.cross_attn:
        _mark_static(c.k, c.v)
    _mark_static(enc.hidden)
    index = torch.ones(1, dtype=torch.long, device=device)  # decoder offset = cache slot of the next token
    model.rope_tables(lengths.view(b, 1), max_position=s + opts.max_new_tokens - 1)  # build before tracing
    fn = compiled_step("redllm", device)
    return _static_loop(logits, lambda tok: fn(model, tok, enc, cache, index), opts, gen, eos_id, pad_id,
                        progress, lambda: index.add_(1))


def generate_text(model: LanguageModel, tokenizer, prompts: Sequence[str], *,
                  options: Optional[SamplingOptions] = None, use_cache: bool = True,
                  progress: Optional[Callable[[int], None]] = None, compile: bool = False) -> list[str]:
    """String in, string out, with a ``lightning_redllm.tokenizer.Tokenizer`` (see :func:`generate`)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    ids = [tokenizer.encode(p) for p in prompts]
    for i, (text, row) in enumerate(zip(prompts, ids)):
        if not row:
            raise ValueError(f"prompt {i} ({text!r}) is empty after tokenization")
    out = generate(model, ids, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                   options=options, use_cache=use_cache, progress=progress, compile=compile)
    return [tokenizer.decode(o) for o in out]
