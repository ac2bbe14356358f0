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

The package: ``sampling`` (options, next-token sampling, padded prompt batches), ``decode`` (the eager
paths and :func:`generate` / :func:`generate_text`), ``static`` (the compiled static-cache path and its
shape buckets), ``load`` (a checkpoint loaded for inference: model, tokenizer, config).
"""
from __future__ import annotations

from .decode import generate, generate_text
from .load import load_for_inference
from .sampling import ContextLengthWarning, ProgressPrinter, SamplingOptions, context_overflow, sample_next
from .static import DONE_CHECK_EVERY, STATIC_POOL_SIZE, bucket, compiled_step, release_static_buffers, static_buckets

__all__ = ["DONE_CHECK_EVERY", "STATIC_POOL_SIZE", "ContextLengthWarning", "ProgressPrinter", "SamplingOptions",
           "bucket", "compiled_step", "context_overflow", "generate", "generate_text", "load_for_inference",
           "release_static_buffers", "sample_next", "static_buckets"]
