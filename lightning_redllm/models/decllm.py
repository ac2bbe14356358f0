"""DecLLM: a decoder-only stack of shared blocks with a tied LM head (causal LM)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..config import ModelConfig
from ..nn import AttentionInputs, Block, KVCache, RMSNorm, and_masks, build_mask, causal, diagonal, key_valid, or_masks, prefix
from .base import LanguageModel, ModelOutput


class DecLLM(LanguageModel):
    """Decoder-only LM.

    ``forward`` covers training (right-padded batches, pure causal path), prefix-LM training
    (``prefix_lengths``: bidirectional attention over each example's prefix — the study's
    "DecLLM + BiAttn"), left-padded batched generation (``attention_mask``) and KV-cached decoding
    (``cache`` from :meth:`init_cache`).
    """

    def __init__(self, config: ModelConfig) -> None:
        if config.family != "decllm":
            raise ValueError(f"DecLLM needs a config with family='decllm', got {config.family!r}")
        super().__init__(config)
        self.layers = nn.ModuleList(Block.from_config(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)

    def residual_streams(self) -> dict[str, int]:
        return {"layers": 2 * len(self.layers)}  # self-attention + FFN per layer

    def init_cache(self, batch: int, max_len: int, dtype: Optional[torch.dtype] = None,
                   device: Optional[torch.device] = None) -> list[KVCache]:
        return self._kv_caches(len(self.layers), batch, max_len, dtype, device)

    def forward(self, input_ids: torch.Tensor, labels: Optional[torch.Tensor] = None, *,
                positions: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None,
                prefix_lengths: Optional[torch.Tensor] = None,
                cache: Optional[list[KVCache]] = None,
                z_loss: float = 0.0,
                return_logits: Optional[bool] = None) -> ModelOutput:
        """
        Args:
            input_ids: (B, T) token ids.
            labels: (B, T) targets aligned with ``input_ids`` (already shifted), -100 = ignore.
            positions: (B, T) RoPE positions; default ``past + arange(T)``, or derived from
                ``attention_mask`` (first real token at position 0) when that is given.
            attention_mask: (B, past + T) bool, False for (left) padding keys.
            prefix_lengths: (B,) tokens at the start of each example that attend bidirectionally
                (counted from the first real token when ``attention_mask`` marks left padding).
            cache: per-layer KV caches for incremental decoding.
            z_loss: weight of the z-loss term (study: 1e-4 in pretraining).
            return_logits: default: only when no labels are given.
        """
        self._check_ids("input_ids", input_ids)
        b, t = input_ids.shape
        past = cache[0].length if cache else 0
        device = input_ids.device
        if labels is not None:
            self._check_labels(labels, input_ids)
        if attention_mask is not None and attention_mask.shape != (b, past + t):
            raise ValueError(f"attention_mask must have shape {(b, past + t)}, got {tuple(attention_mask.shape)}")
        if prefix_lengths is not None and prefix_lengths.shape != (b,):
            raise ValueError(f"prefix_lengths must have shape ({b},), got {tuple(prefix_lengths.shape)}")

        max_position: Optional[int] = past + t - 1  # a bound for the derived positions, known on the host
        if positions is None:
            if attention_mask is not None:
                positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
            else:
                positions = torch.arange(past, past + t, device=device).expand(b, t)
        else:
            max_position = None  # caller's positions: no bound known, the table reads their max
        cos, sin = self.rope_tables(positions, max_position=max_position)

        mask = None
        if attention_mask is not None or prefix_lengths is not None or (past > 0 and t > 1):
            fn = causal
            if prefix_lengths is not None and attention_mask is not None:
                # left padding: the prefix is counted from each row's first real token
                key_pos = attention_mask.long().cumsum(-1) - 1  # (B, past + T)
                in_prefix = attention_mask.bool() & (key_pos < prefix_lengths.to(device).view(b, 1))
                fn = or_masks(fn, key_valid(in_prefix))
            elif prefix_lengths is not None:
                fn = or_masks(fn, prefix(prefix_lengths.to(device)))
            if attention_mask is not None:
                # the diagonal keeps fully padded query rows finite; their outputs are never used
                fn = or_masks(and_masks(fn, key_valid(attention_mask.bool())), diagonal)
            mask = build_mask(fn, b, t, past + t, device, q_offset=past)
        # a single cached query attends to every cached key: no mask, not "causal" either
        inputs = AttentionInputs(cos=cos, sin=sin, mask=mask, is_causal=mask is None and t > 1)

        x = self.embed(input_ids)  # (B, T, C)
        for i, layer in enumerate(self.layers):
            x = layer(x, inputs, cache=cache[i] if cache else None)
        x = self.norm(x)
        return self.lm_output(x, labels, z_loss, return_logits)
