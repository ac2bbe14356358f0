"""Pre-norm transformer block: self-attention, optional cross-attention, SwiGLU.

The one structural flag is ``has_cross``: a RedLLM decoder block is an encoder block plus a
cross-attention sub-layer. Whether self-attention is causal is decided by the mask the model
passes in, not by the block.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .attention import Attention, AttentionInputs, CrossKVCache, KVCache
from .mlp import SwiGLU
from .norm import RMSNorm


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int, ffn_dim: int, *,
                 has_cross: bool = False, qkv_norm: bool = True, attn_out_norm: bool = False,
                 eps: float = 1e-6, dropout: float = 0.0) -> None:
        super().__init__()
        attn_kwargs = dict(qkv_norm=qkv_norm, out_norm=attn_out_norm, eps=eps, dropout=dropout)
        self.attn_norm = RMSNorm(d_model, eps)
        self.self_attn = Attention(d_model, n_heads, n_kv_heads, head_dim, **attn_kwargs)
        self.has_cross = has_cross
        if has_cross:
            self.cross_norm = RMSNorm(d_model, eps)
            self.cross_attn = Attention(d_model, n_heads, n_kv_heads, head_dim, is_cross=True, **attn_kwargs)
        self.mlp_norm = RMSNorm(d_model, eps)
        self.mlp = SwiGLU(d_model, ffn_dim)
        self.resid_dropout = nn.Dropout(dropout)

    @classmethod
    def from_config(cls, cfg, has_cross: bool = False) -> "Block":
        """Build from a ``ModelConfig`` (duck-typed so nn/ stays free of package imports)."""
        return cls(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim,
                   has_cross=has_cross, qkv_norm=cfg.qkv_norm, attn_out_norm=cfg.attn_out_norm,
                   eps=cfg.norm_eps, dropout=cfg.dropout)

    def forward(self, x: torch.Tensor, self_inputs: AttentionInputs, *,
                cross_inputs: Optional[AttentionInputs] = None,
                encoder_out: Optional[torch.Tensor] = None,
                cache: Optional[KVCache] = None,
                cross_cache: Optional[CrossKVCache] = None) -> torch.Tensor:
        """x: (B, T, C) -> (B, T, C)."""
        x = x + self.resid_dropout(self.self_attn(self.attn_norm(x), self_inputs, cache=cache))
        if self.has_cross:
            if cross_inputs is None:
                raise ValueError("a block with cross-attention needs cross_inputs")
            h = self.cross_attn(self.cross_norm(x), cross_inputs, kv_input=encoder_out, cache=cross_cache)
            x = x + self.resid_dropout(h)
        return x + self.resid_dropout(self.mlp(self.mlp_norm(x)))
