"""One attention class for encoder self-, decoder self- and cross-attention, plus KV caches.

Shapes: B batch, T query length, S key length, H query heads, G key/value heads, D head dim,
C model width (= d_model).

Every path goes through ``F.scaled_dot_product_attention``. The pure causal path passes
``is_causal=True`` and no mask so the flash kernel stays eligible; every other pattern receives a
boolean mask built once per forward by the model (see ``masks.py``).

Stability recipe of the study: parameter-free RMSNorm on Q, K and V over the head dim before the
dot product, and (RedLLM) a parameter-free RMSNorm of each head's output before the output
projection.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .norm import rms_norm
from .rope import apply_rope


@dataclass
class AttentionInputs:
    """What one attention call needs besides its input: RoPE tables and the mask.

    ``cos``/``sin`` rotate the queries; ``kv_cos``/``kv_sin`` the keys (equal to the query tables
    for self-attention; encoder positions for cross-attention). ``mask`` is (B, 1, T, S) bool or
    None; ``is_causal`` is only honoured when ``mask`` is None. ``cache_index`` (T,) long, on the
    device: static-cache decoding writes this call's keys/values at these slots of a
    :class:`KVCache` (see :meth:`KVCache.write`) instead of appending them.
    """

    cos: torch.Tensor
    sin: torch.Tensor
    kv_cos: Optional[torch.Tensor] = None
    kv_sin: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None
    is_causal: bool = False
    cache_index: Optional[torch.Tensor] = None


class KVCache:
    """Preallocated self-attention cache of one layer: (B, G, max_len, D) keys and values.

    Two ways to fill it:

    * :meth:`append` (dynamic): the host counts the filled slots (``length``) and attention reads
      only those; shapes grow by one each decoding step.
    * :meth:`write` (static): the slots to write are a device tensor and attention reads all
      ``max_len`` slots under a key-validity mask, so every decoding step has the same shapes and
      the same compiled graph (or CUDA graph) serves all of them. ``length`` is not advanced.
    """

    def __init__(self, batch: int, n_kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        self.k = torch.zeros(batch, n_kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, G, T, D) after the cached ones; return all keys/values so far."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > cache length {self.max_len}")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def rows(self, n: int) -> "KVCache":
        """An empty cache over the first ``n`` rows of this one's buffers: views, so what it stores
        lands here (compiled decoding pads the batch to a bucket; the prompt fills the real rows)."""
        view = object.__new__(KVCache)
        view.k, view.v, view.length = self.k[:n], self.v[:n], 0
        return view

    def write(self, k: torch.Tensor, v: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, G, T, D) at slots ``index`` (T,) long; return the whole (B, G, max_len, D)
        buffers (the caller masks the slots that are not filled yet). No host sync, fixed shapes."""
        self.k.index_copy_(2, index, k.to(self.k.dtype))
        self.v.index_copy_(2, index, v.to(self.v.dtype))
        return self.k, self.v


class CrossKVCache:
    """Cross-attention keys/values, computed once from the encoder output and then reused."""

    def __init__(self) -> None:
        self.k: Optional[torch.Tensor] = None
        self.v: Optional[torch.Tensor] = None


class Attention(nn.Module):
    """Multi-head (or grouped-query) attention with RoPE and the study's normalizations.

    Args:
        d_model: input/output width C.
        n_heads: query heads H.
        n_kv_heads: key/value heads G (H % G == 0).
        head_dim: D.
        qkv_norm: parameter-free RMSNorm of Q, K, V over D.
        out_norm: parameter-free RMSNorm of each head's output before ``o_proj``.
        eps: RMSNorm epsilon.
        dropout: attention-probability dropout (training only).
        is_cross: keys/values come from ``kv_input`` (the encoder output) instead of ``x``.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int, *,
                 qkv_norm: bool = True, out_norm: bool = False, eps: float = 1e-6,
                 dropout: float = 0.0, is_cross: bool = False) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.qkv_norm, self.out_norm, self.eps = qkv_norm, out_norm, eps
        self.dropout, self.is_cross = dropout, is_cross
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=False)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, n, self.head_dim).transpose(1, 2)  # (B, n, T, D)

    def _project_kv(self, src: torch.Tensor, inputs: AttentionInputs) -> tuple[torch.Tensor, torch.Tensor]:
        k = self._heads(self.k_proj(src), self.n_kv_heads)  # (B, G, S, D)
        v = self._heads(self.v_proj(src), self.n_kv_heads)  # (B, G, S, D)
        if self.qkv_norm:
            k, v = rms_norm(k, self.eps), rms_norm(v, self.eps)
        kv_cos = inputs.cos if inputs.kv_cos is None else inputs.kv_cos
        kv_sin = inputs.sin if inputs.kv_sin is None else inputs.kv_sin
        return apply_rope(k, kv_cos, kv_sin), v

    def forward(self, x: torch.Tensor, inputs: AttentionInputs, *,
                kv_input: Optional[torch.Tensor] = None,
                cache: Optional[KVCache | CrossKVCache] = None) -> torch.Tensor:
        """x: (B, T, C); kv_input: (B, S, C) for cross-attention -> (B, T, C)."""
        b, t, _ = x.shape
        q = self._heads(self.q_proj(x), self.n_heads)  # (B, H, T, D)
        if self.qkv_norm:
            q = rms_norm(q, self.eps)
        q = apply_rope(q, inputs.cos, inputs.sin)

        if self.is_cross:
            if isinstance(cache, CrossKVCache) and cache.k is not None:
                k, v = cache.k, cache.v
            else:
                if kv_input is None:
                    raise ValueError("cross-attention needs kv_input (the encoder output)")
                k, v = self._project_kv(kv_input, inputs)
                if isinstance(cache, CrossKVCache):
                    cache.k, cache.v = k, v
        else:
            k, v = self._project_kv(x, inputs)
            if isinstance(cache, KVCache) and inputs.cache_index is not None:
                k, v = cache.write(k, v, inputs.cache_index)  # (B, G, max_len, D), masked by the caller
            elif isinstance(cache, KVCache):
                k, v = cache.append(k, v)  # (B, G, S, D) with S = cached + T

        out = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=inputs.mask,
            is_causal=inputs.is_causal and inputs.mask is None,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_heads != self.n_kv_heads,
        )  # (B, H, T, D)
        if self.out_norm:
            out = rms_norm(out, self.eps)
        out = out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)  # (B, T, H*D)
        return self.o_proj(out)
