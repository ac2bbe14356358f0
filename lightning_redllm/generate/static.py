"""Compiled decoding over a static KV cache, with shape buckets (see the package docstring)."""
from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from ..models import DecLLM, RedLLM
from ..models.base import LanguageModel
from ..models.redllm import EncoderOutput, RedLLMCache
from ..nn import CrossKVCache
from ..nn.norm import compute_dtype
from .sampling import _left_padded, _right_padded, _step_done, sample_next


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


