"""Eager decoding for both families (with or without the KV cache) and the public ``generate``."""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence

import torch

from ..models import DecLLM, RedLLM
from ..models.base import LanguageModel
from .sampling import (ContextLengthWarning, SamplingOptions, _check_prompts, _finish, _left_padded, _right_padded,
                       _step_done, context_overflow, sample_next)
from .static import _static_decllm, _static_redllm


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


def _eager_loop(logits: torch.Tensor, advance: Callable[[torch.Tensor], torch.Tensor], opts: SamplingOptions, gen,
                eos_id: Optional[int], pad_id: int, progress) -> torch.Tensor:
    """The eager decoding loop of both families: sample the next tokens, mark finished rows (padding
    them from then on), report progress, stop when every row is done or the budget is spent.
    ``advance(next_tokens)`` feeds the tokens to the model and returns the next step's logits."""
    done = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    out = []
    for step in range(opts.max_new_tokens):
        nxt, done = _step_done(sample_next(logits, opts, gen), done, eos_id, pad_id)
        out.append(nxt)
        if progress is not None:
            progress(step + 1)
        if bool(done.all()) or step == opts.max_new_tokens - 1:
            break
        logits = advance(nxt)
    return torch.stack(out, dim=1)


def _generate_decllm(model: DecLLM, prompts, bos_id, eos_id, pad_id, opts, use_cache, gen, add_bos,
                     progress) -> torch.Tensor:
    ids, mask, prefix = _left_padded(model, prompts, bos_id, pad_id, add_bos)
    b, p_len = ids.shape
    cache = model.init_cache(b, p_len + opts.max_new_tokens) if use_cache else None
    logits = model(ids, attention_mask=mask, prefix_lengths=prefix, cache=cache, return_logits="last").logits[:, -1]

    def advance(nxt: torch.Tensor) -> torch.Tensor:
        nonlocal ids, mask
        mask = torch.cat([mask, torch.ones((b, 1), dtype=torch.bool, device=mask.device)], dim=1)
        if use_cache:
            return model(nxt.unsqueeze(1), attention_mask=mask, cache=cache, return_logits="last").logits[:, -1]
        ids = torch.cat([ids, nxt.unsqueeze(1)], dim=1)
        return model(ids, attention_mask=mask, prefix_lengths=prefix, return_logits="last").logits[:, -1]

    return _eager_loop(logits, advance, opts, gen, eos_id, pad_id, progress)


def _generate_redllm(model: RedLLM, prompts, bos_id, eos_id, pad_id, opts, use_cache, gen,
                     progress) -> torch.Tensor:
    device = model.embed.weight.device
    enc_ids, lengths = _right_padded(model, prompts, pad_id)
    b = enc_ids.shape[0]
    enc = model.encode(enc_ids, lengths)
    dec = torch.full((b, 1), bos_id, dtype=torch.long, device=device)
    cache = model.init_cache(b, opts.max_new_tokens + 1) if use_cache else None
    # decode through forward (not .decode): sharding wrappers gather the tied head for forward
    logits = model(None, dec, encoder_outputs=enc, cache=cache, return_logits="last").logits[:, -1]

    def advance(nxt: torch.Tensor) -> torch.Tensor:
        nonlocal dec
        if use_cache:
            return model(None, nxt.unsqueeze(1), encoder_outputs=enc, cache=cache, return_logits="last").logits[:, -1]
        dec = torch.cat([dec, nxt.unsqueeze(1)], dim=1)
        return model(None, dec, encoder_outputs=enc, return_logits="last").logits[:, -1]

    return _eager_loop(logits, advance, opts, gen, eos_id, pad_id, progress)


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
