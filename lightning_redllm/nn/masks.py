"""Attention masks composed from small index functions, built once per forward.

A *mask function* maps broadcastable index tensors ``(b, q, k)`` — shapes (B,1,1,1), (1,1,Tq,1)
and (1,1,1,Tk) — to a boolean tensor, ``True`` where the query may attend to the key. Functions
compose with :func:`and_masks` / :func:`or_masks`; :func:`build_mask` materializes a
(B, 1, Tq, Tk) boolean mask for ``F.scaled_dot_product_attention``.

    causal                      decoder self-attention
    padding(lengths)            keys past each example's length are hidden (right padding)
    key_valid(valid)            arbitrary per-key validity (left-padded generation)
    prefix(prefix_lengths)      keys inside the prefix are visible to every query
    prefix LM = or_masks(causal, prefix(p))     ("DecLLM + BiAttn" in the study)
    cross = padding(encoder_lengths)           decoder queries -> unpadded encoder keys
    slots_upto(cache_index)     static KV cache: query i sees the cache slots <= cache_index[i]

Query indices may be offset (``q_offset``) so the same functions serve a KV-cached decode step.
"""
from __future__ import annotations

from typing import Callable

import torch

MaskFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def causal(b: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return k <= q


def bidirectional(b: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(k <= q)


def diagonal(b: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return k == q


def padding(lengths: torch.Tensor) -> MaskFn:
    """Keys at index >= lengths[b] are padding. lengths: (B,) int."""

    def fn(b, q, k):
        return k < lengths[b]

    return fn


def key_valid(valid: torch.Tensor) -> MaskFn:
    """valid: (B, Tk) bool, True for real keys."""

    def fn(b, q, k):
        return valid[b, k]

    return fn


def prefix(prefix_lengths: torch.Tensor) -> MaskFn:
    """Every query sees keys inside its example's prefix. prefix_lengths: (B,) int."""

    def fn(b, q, k):
        return k < prefix_lengths[b]

    return fn


def slots_upto(cache_index: torch.Tensor) -> MaskFn:
    """Static-cache decoding: query i (written at slot ``cache_index[i]``) sees slots <= that one.
    cache_index: (Tq,) long, on the device (no host value needed)."""

    def fn(b, q, k):
        return k <= cache_index[q]

    return fn


def and_masks(*fns: MaskFn) -> MaskFn:
    def fn(b, q, k):
        out = fns[0](b, q, k)
        for f in fns[1:]:
            out = out & f(b, q, k)
        return out

    return fn


def or_masks(*fns: MaskFn) -> MaskFn:
    def fn(b, q, k):
        out = fns[0](b, q, k)
        for f in fns[1:]:
            out = out | f(b, q, k)
        return out

    return fn


def build_mask(fn: MaskFn, batch: int, q_len: int, k_len: int, device: torch.device, q_offset: int = 0) -> torch.Tensor:
    """Materialize ``fn`` as a (B, 1, Tq, Tk) bool mask; query i has absolute index q_offset + i."""
    b = torch.arange(batch, device=device).view(batch, 1, 1, 1)
    q = (torch.arange(q_len, device=device) + q_offset).view(1, 1, q_len, 1)
    k = torch.arange(k_len, device=device).view(1, 1, 1, k_len)
    return fn(b, q, k).expand(batch, 1, q_len, k_len)
