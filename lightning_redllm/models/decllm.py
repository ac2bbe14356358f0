"""DecLLM: a decoder-only stack of shared blocks with a tied LM head (causal LM)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..config import ModelConfig
from ..nn import (AttentionInputs, Block, KVCache, RMSNorm, and_masks, build_mask, causal, diagonal, key_valid, or_masks,
                  prefix, slots_upto)
from .base import LanguageModel, ModelOutput


class DecLLM(LanguageModel):
    """Decoder-only LM.

    ``forward`` covers training (right-padded batches, pure causal path), prefix-LM training
    (``prefix_lengths``: bidirectional attention over each example's prefix — the study's
    "DecLLM + BiAttn"), left-padded batched generation (``attention_mask``) and KV-cached decoding
    (``cache`` from :meth:`init_cache`), dynamic (``cache`` grows) or static (``cache_index``:
    fixed shapes every step, see ``KVCache.write``).
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

    def block_lists(self) -> list[nn.ModuleList]:
        return [self.layers]

    def check_inputs(self, input_ids: torch.Tensor, labels: Optional[torch.Tensor] = None, *,
                     prefix_lengths: Optional[torch.Tensor] = None, values: bool = True) -> None:
        """The checks of :meth:`forward` on training inputs; ``values``: also read the token ids
        (free on CPU tensors: the training module calls this on the CPU batch)."""
        self._check_ids("input_ids", input_ids, values)
        b = input_ids.shape[0]
        if labels is not None:
            self._check_labels(labels, input_ids, values)
        if prefix_lengths is not None and prefix_lengths.shape != (b,):
            raise ValueError(f"prefix_lengths must have shape ({b},), got {tuple(prefix_lengths.shape)}")

    def forward(self, input_ids: torch.Tensor, labels: Optional[torch.Tensor] = None, *,
                positions: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None,
                prefix_lengths: Optional[torch.Tensor] = None,
                cache: Optional[list[KVCache]] = None,
                cache_index: Optional[torch.Tensor] = None,
                z_loss: float = 0.0,
                return_logits: Optional[bool | str] = None) -> ModelOutput:
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
            cache_index: (T,) long device tensor: static-cache decoding. This call's keys/values
                go to these cache slots; ``attention_mask`` (B, max_len) then marks the valid slots
                of the whole cache (this call's included) and ``positions`` must be given. Nothing
                is read on the host, so every decoding step has identical shapes (one compiled graph).
            z_loss: weight of the z-loss term (study: 1e-4 in pretraining).
            return_logits: default: only when no labels are given; ``"last"``: only the last
                position's, (B, 1, V) (generation: no prompt-length x vocab logits).
        """
        self.check_inputs(input_ids, labels, prefix_lengths=prefix_lengths, values=self._check_values())
        b, t = input_ids.shape
        if cache_index is not None:
            return self._static_step(input_ids, positions, attention_mask, cache, cache_index, return_logits)
        past = cache[0].length if cache else 0
        device = input_ids.device
        if attention_mask is not None and attention_mask.shape != (b, past + t):
            raise ValueError(f"attention_mask must have shape {(b, past + t)}, got {tuple(attention_mask.shape)}")

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

    def _static_step(self, input_ids: torch.Tensor, positions: Optional[torch.Tensor],
                     attention_mask: Optional[torch.Tensor], cache: Optional[list[KVCache]],
                     cache_index: torch.Tensor, return_logits: Optional[bool]) -> ModelOutput:
        """Static-cache decoding step (see ``forward``'s ``cache_index``)."""
        b, t = input_ids.shape
        if not cache or positions is None or attention_mask is None:
            raise ValueError("static-cache decoding (cache_index) needs cache, positions and attention_mask")
        max_len = cache[0].max_len
        if attention_mask.shape != (b, max_len) or positions.shape != (b, t) or cache_index.shape != (t,):
            raise ValueError(f"static-cache decoding needs attention_mask {(b, max_len)}, positions {(b, t)} and "
                             f"cache_index ({t},); got {tuple(attention_mask.shape)}, {tuple(positions.shape)}, "
                             f"{tuple(cache_index.shape)}")
        # a position never exceeds its cache slot (positions count real tokens only): a host bound
        cos, sin = self.rope_tables(positions, max_position=max_len - 1)
        fn = and_masks(key_valid(attention_mask), slots_upto(cache_index))
        mask = build_mask(fn, b, t, max_len, input_ids.device)
        inputs = AttentionInputs(cos=cos, sin=sin, mask=mask, cache_index=cache_index)
        x = self.embed(input_ids)  # (B, T, C)
        for i, layer in enumerate(self.layers):
            x = layer(x, inputs, cache=cache[i])
        x = self.norm(x)
        return self.lm_output(x, None, 0.0, True if return_logits is None else return_logits)
