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

Shape buckets bound the number of graphs over ragged requests (an lm-eval loop): the batch is
padded up to a power of two (1, 2, 4, ...) with dummy rows, the cache length (and RedLLM's encoder
length) up to a power of two from 64 (64, 128, 256, ...) -- see :func:`static_buckets`. Dummy rows
are computed and dropped (sampling sees the real rows only: same random draws as eager); padded
cache slots and encoder positions are masked, so no real token changes. One graph per bucket,
shared by every call and every model of the same architecture and dtype; the buffers of the last
:data:`STATIC_POOL_SIZE` buckets are kept, so a CUDA graph replays on the same addresses. Dynamo's
recompile limit is raised as new buckets appear, and hitting it anyway is an error, never a
silent fall back to eager.

A prompt plus ``max_new_tokens`` longer than the model's trained context (``config.max_seq_len``)
is allowed -- RoPE extrapolates -- but warned about (:class:`ContextLengthWarning`).
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, TextIO

import torch

from .config import ModelConfig
from .models import DecLLM, RedLLM
from .models.base import LanguageModel
from .models.redllm import EncoderOutput, RedLLMCache
from .nn import CrossKVCache
from .nn.norm import compute_dtype


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
    a compiled one-token step (see the module docstring); the first call of each shape bucket
    (:func:`static_buckets`) pays the compilation, later ones reuse its graph.
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

#: smallest batch bucket (the batch ladder is 1, 2, 4, 8, ...: a single prompt pays for no dummy row)
BATCH_BUCKET_FLOOR = 1
#: smallest cache-length / encoder-length bucket (the ladder is 64, 128, 256, ...: short generations
#: share one graph; attention reading 64 masked slots instead of a few costs next to nothing)
LENGTH_BUCKET_FLOOR = 64
#: buffer sets (KV cache, mask, positions...) kept for reuse across calls, least recently used dropped
STATIC_POOL_SIZE = 4
#: recompile-limit room kept above the number of shape buckets a step has seen (other guards)
RECOMPILE_HEADROOM = 8

_COMPILED: dict[tuple[str, str], Callable] = {}
_GRAPH_KEYS: dict[tuple[str, str], set] = {}
_POOL: "OrderedDict[tuple, _StaticBuffers]" = OrderedDict()
log = logging.getLogger(__name__)


def bucket(n: int, floor: int) -> int:
    """The smallest power of two >= ``n`` and >= ``floor`` (the bucket ladder of compiled decoding)."""
    if n < 1:
        raise ValueError(f"bucket needs a positive size, got {n}")
    return max(floor, 1 << (n - 1).bit_length())


def static_buckets(family: str, prompt_lengths: Sequence[int], max_new_tokens: int, *,
                   add_bos: bool = True) -> tuple[int, ...]:
    """The padded shapes ``generate(compile=True)`` decodes a batch with, i.e. its compiled graph:
    DecLLM ``(batch, cache length)`` with cache length = bos + longest prompt + ``max_new_tokens``;
    RedLLM ``(batch, cache length, encoder length)`` with cache length = ``max_new_tokens`` (bos and
    all but the last new token) and encoder length = longest prompt. Each is rounded up the ladder
    (:func:`bucket`; floors :data:`BATCH_BUCKET_FLOOR`, :data:`LENGTH_BUCKET_FLOOR`)."""
    b, longest = len(prompt_lengths), max(prompt_lengths)
    if family == "decllm":
        return bucket(b, BATCH_BUCKET_FLOOR), bucket(longest + int(add_bos) + max_new_tokens, LENGTH_BUCKET_FLOOR)
    if family == "redllm":
        return (bucket(b, BATCH_BUCKET_FLOOR), bucket(max_new_tokens, LENGTH_BUCKET_FLOOR),
                bucket(longest, LENGTH_BUCKET_FLOOR))
    raise ValueError(f"static_buckets: family must be 'decllm' or 'redllm', got {family!r}")


def _decllm_step(model: DecLLM, ids, positions, key_mask, cache, index):
    return model(ids, positions=positions, attention_mask=key_mask, cache=cache, cache_index=index,
                 return_logits="last").logits[:, -1]


def _redllm_step(model: RedLLM, ids, enc, cache, index):
    return model(None, ids, encoder_outputs=enc, cache=cache, cache_index=index, return_logits="last").logits[:, -1]


def compiled_step(family: str, device: torch.device) -> Callable:
    """The compiled one-token step of a family: ``mode="reduce-overhead"`` (CUDA graphs) on CUDA,
    default inductor elsewhere; ``fullgraph=True`` (a graph break would be an error, not a silent
    slowdown) and static shapes. Compiled once per process; dynamo keeps one graph per shape
    bucket (and dtype), shared by every model of the same architecture (parameters are graph inputs)."""
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    key = (family, mode)
    if key not in _COMPILED:
        fn = _decllm_step if family == "decllm" else _redllm_step
        _COMPILED[key] = torch.compile(fn, mode=mode, fullgraph=True, dynamic=False)
    return _COMPILED[key]


def _dynamo_limit_names() -> tuple[str, str]:
    cfg = torch._dynamo.config
    if hasattr(cfg, "recompile_limit"):
        return "recompile_limit", "accumulated_recompile_limit"
    return "cache_size_limit", "accumulated_cache_size_limit"  # torch < 2.7 names


def _reserve_recompiles(fn_key: tuple[str, str], graph_key: tuple) -> None:
    """Keep dynamo's per-function recompile limit above the number of graphs this step can need
    (one per shape bucket seen, plus :data:`RECOMPILE_HEADROOM`), raising it -- and the accumulated
    limit by as much -- when a new bucket would not fit. Dynamo's default (8) is below what a sweep
    over ragged batches meets (batch buckets x length buckets)."""
    seen = _GRAPH_KEYS.setdefault(fn_key, set())
    if graph_key in seen:
        return
    seen.add(graph_key)
    cfg = torch._dynamo.config
    name, acc_name = _dynamo_limit_names()
    have, want = getattr(cfg, name), len(seen) + RECOMPILE_HEADROOM
    if have < want:
        setattr(cfg, name, want)
        if hasattr(cfg, acc_name):
            setattr(cfg, acc_name, getattr(cfg, acc_name) + want - have)
        log.info("compiled decoding: torch._dynamo.config.%s raised from %d to %d (%d shape buckets of the %s step)",
                 name, have, want, len(seen), fn_key[0])


@contextlib.contextmanager
def _loud_recompile_limit(family: str):
    """Hitting the recompile limit inside compiled decoding is an error with the remedy, never a
    silent fall back to eager (``fail_on_recompile_limit_hit`` where this torch has it)."""
    cfg = torch._dynamo.config
    patch = cfg.patch(fail_on_recompile_limit_hit=True) if hasattr(cfg, "fail_on_recompile_limit_hit") \
        else contextlib.nullcontext()
    limit_hit = getattr(torch._dynamo.exc, "FailOnRecompileLimitHit", None)
    try:
        with patch:
            yield
    except Exception as e:
        if limit_hit is None or not isinstance(e, limit_hit):
            raise
        name = _dynamo_limit_names()[0]
        raise RuntimeError(
            f"compiled decoding: the {family} step hit torch._dynamo.config.{name} "
            f"({getattr(cfg, name)}) -- more graphs than its shape buckets account for (another guard "
            f"changes between calls: dtype, model architecture?); raise torch._dynamo.config.{name} or "
            "generate with compile=False") from e


@dataclass
class _StaticBuffers:
    """Everything a compiled step reads or writes, at the bucket's shapes. Reused across calls of
    the same bucket so a CUDA graph replays on the same addresses (no re-recording)."""

    cache: object                                    # list[KVCache] (DecLLM) or RedLLMCache
    tokens: torch.Tensor                             # (Bb, 1) step input; dummy rows hold pad_id
    index: torch.Tensor                              # (1,) cache slot of the step's token
    key_mask: Optional[torch.Tensor] = None          # DecLLM (Bb, Lb): valid cache slots
    positions: Optional[torch.Tensor] = None         # DecLLM (Bb, 1): RoPE position of the step's token
    enc: Optional[EncoderOutput] = None              # RedLLM: (Bb, Sb, C) placeholder + lengths (Bb,)

    def tensors(self) -> list[torch.Tensor]:
        out = [self.tokens, self.index]
        if self.key_mask is not None:
            out += [self.key_mask, self.positions]
        if isinstance(self.cache, RedLLMCache):
            out += [self.enc.hidden, self.enc.lengths]
            out += [t for c in self.cache.self_attn for t in (c.k, c.v)]
            out += [t for c in self.cache.cross_attn for t in (c.k, c.v)]
        else:
            out += [t for c in self.cache for t in (c.k, c.v)]
        return out


def _buffers(model: LanguageModel, shapes: tuple[int, ...], pad_id: int) -> _StaticBuffers:
    """The zeroed buffer set of a bucket, from the pool or new (then marked static for CUDA graphs)."""
    cfg, w = model.config, model.embed.weight
    key = (cfg.family, w.device, w.dtype, shapes, cfg.n_kv_heads, cfg.head_dim, cfg.d_model,
           len(model.block_lists()[-1]))
    buf = _POOL.get(key)
    if buf is None:
        bb, lb = shapes[0], shapes[1]
        index = torch.zeros(1, dtype=torch.long, device=w.device)
        tokens = torch.zeros((bb, 1), dtype=torch.long, device=w.device)
        if isinstance(model, RedLLM):
            sb = shapes[2]
            cache = model.init_cache(bb, lb)
            for c in cache.cross_attn:
                c.k = torch.zeros(bb, cfg.n_kv_heads, sb, cfg.head_dim, dtype=w.dtype, device=w.device)
                c.v = torch.zeros_like(c.k)
            enc = EncoderOutput(torch.zeros(bb, sb, cfg.d_model, dtype=w.dtype, device=w.device),
                                torch.ones(bb, dtype=torch.long, device=w.device))
            buf = _StaticBuffers(cache, tokens, index, enc=enc)
        else:
            buf = _StaticBuffers(model.init_cache(bb, lb), tokens, index,
                                 key_mask=torch.zeros((bb, lb), dtype=torch.bool, device=w.device),
                                 positions=torch.zeros((bb, 1), dtype=torch.long, device=w.device))
        for t in buf.tensors():  # written in place inside the step: a CUDA graph must see the same addresses
            torch._dynamo.mark_static_address(t)
        _POOL[key] = buf
        while len(_POOL) > STATIC_POOL_SIZE:
            _POOL.popitem(last=False)
    _POOL.move_to_end(key)
    for t in buf.tensors():
        t.zero_()
    buf.tokens.fill_(pad_id)
    if buf.enc is not None:
        buf.enc.lengths.fill_(1)  # dummy rows: one (zero) encoder key, so their attention stays finite
    return buf


def release_static_buffers() -> None:
    """Free the buffer sets compiled decoding keeps for reuse (at most :data:`STATIC_POOL_SIZE`)."""
    _POOL.clear()


def _fit_rope(model: LanguageModel, max_position: int) -> None:
    """Give the RoPE tables a length that depends on the bucket only (the table is a graph input:
    a length left over from an earlier, longer call would be another graph). Same values: each
    row is computed on its own, in fp64."""
    rope, w = model.rope, model.embed.weight
    dtype = compute_dtype(w.dtype)
    length = rope.max_len
    while length <= max_position:
        length *= 2
    if rope.cos.shape[0] != length or rope.cos.device != w.device or rope.cos.dtype != dtype or rope.cos.is_meta:
        rope._build(length, w.device, dtype)


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
        logits = step(nxt)[:b].clone()  # clone: a CUDA-graph output is overwritten by the next replay
        advance()
    return torch.stack(out, dim=1)


def _run_static(model, shapes, buf, step, first_logits, opts, gen, eos_id, pad_id, progress, advance):
    family = model.config.family
    fn_key = (family, "reduce-overhead" if first_logits.device.type == "cuda" else "default")
    _reserve_recompiles(fn_key, (shapes, model.embed.weight.dtype, model.rope.cos.shape[0], repr(model.config)))
    with _loud_recompile_limit(family):
        return _static_loop(first_logits, step, opts, gen, eos_id, pad_id, progress, advance)


def _static_decllm(model: DecLLM, prompts, bos_id, eos_id, pad_id, opts, gen, add_bos, progress) -> torch.Tensor:
    """Prompt: the ordinary cached forward on the real rows, into the first rows of the bucket's
    cache. Steps: the compiled step on the whole bucket; dummy rows (no valid prompt slot, pad
    tokens) are computed and dropped, and sampling sees the real rows only (same random draws)."""
    device = model.embed.weight.device
    ids, mask, prefix = _left_padded(model, prompts, bos_id, pad_id, add_bos)
    b, p_len = ids.shape
    shapes = static_buckets("decllm", [len(p) for p in prompts], opts.max_new_tokens, add_bos=add_bos)
    _fit_rope(model, shapes[1] - 1)  # positions never exceed cache slots
    buf = _buffers(model, shapes, pad_id)
    logits = model(ids, attention_mask=mask, prefix_lengths=prefix, cache=[c.rows(b) for c in buf.cache],
                   return_logits="last").logits[:, -1]
    buf.key_mask[:b, :p_len] = mask
    buf.positions[:b] = mask.sum(dim=1, keepdim=True)  # the next real token's RoPE position
    buf.index.fill_(p_len)  # its cache slot
    fn = compiled_step("decllm", device)

    def step(tok):
        buf.tokens[:b, 0] = tok
        buf.key_mask.index_fill_(1, buf.index, True)
        return fn(model, buf.tokens, buf.positions, buf.key_mask, buf.cache, buf.index)

    def advance():
        buf.positions.add_(1)
        buf.index.add_(1)

    return _run_static(model, shapes, buf, step, logits, opts, gen, eos_id, pad_id, progress, advance)


def _static_redllm(model: RedLLM, prompts, bos_id, eos_id, pad_id, opts, gen, progress) -> torch.Tensor:
    """Encoder and bos step: the ordinary paths on the real rows (the bos step into the first rows
    of the bucket's cache); the cross-attention K/V are then copied into the bucket's buffers, zero
    beyond each prompt (masked by the encoder lengths). Steps as in :func:`_static_decllm`."""
    device = model.embed.weight.device
    enc_ids, lengths = _right_padded(model, prompts, pad_id)
    b, s = enc_ids.shape
    shapes = static_buckets("redllm", [len(p) for p in prompts], opts.max_new_tokens)
    _fit_rope(model, shapes[2] + shapes[1] - 1)  # decoder positions: encoder length + offset < cache length
    enc = model.encode(enc_ids, lengths)
    buf = _buffers(model, shapes, pad_id)
    cache = RedLLMCache(self_attn=[c.rows(b) for c in buf.cache.self_attn],
                        cross_attn=[CrossKVCache() for _ in buf.cache.cross_attn])
    dec = torch.full((b, 1), bos_id, dtype=torch.long, device=device)
    # bos: fills slot 0 and computes the cross-attention K/V once
    logits = model(None, dec, encoder_outputs=enc, cache=cache, return_logits="last").logits[:, -1]
    for pooled, fresh in zip(buf.cache.cross_attn, cache.cross_attn):
        pooled.k[:b, :, :s] = fresh.k
        pooled.v[:b, :, :s] = fresh.v
    buf.enc.lengths[:b] = lengths
    buf.index.fill_(1)  # decoder offset = cache slot of the next token
    fn = compiled_step("redllm", device)

    def step(tok):
        buf.tokens[:b, 0] = tok
        return fn(model, buf.tokens, buf.enc, buf.cache, buf.index)

    return _run_static(model, shapes, buf, step, logits, opts, gen, eos_id, pad_id, progress,
                       lambda: buf.index.add_(1))


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
