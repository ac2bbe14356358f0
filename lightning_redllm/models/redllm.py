"""RedLLM: bidirectional encoder + causal decoder with cross-attention, one tied embedding.

RoPE uses continuous positions in all three attentions (the study's choice, unlike HF T5Gemma):
encoder tokens sit at ``0..k-1``; decoder tokens continue at ``k, k+1, ...`` where ``k`` is the
example's unpadded encoder length; cross-attention rotates queries with the decoder positions and
keys with the encoder positions, so a query "sees" the encoder text as its immediate past.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..config import ModelConfig
from ..nn import AttentionInputs, Block, CrossKVCache, KVCache, RMSNorm, build_mask, causal, padding, slots_upto
from .base import LanguageModel, ModelOutput


@dataclass
class EncoderOutput:
    hidden: torch.Tensor                    # (B, S, C) final-normed encoder states
    lengths: Optional[torch.Tensor] = None  # (B,) unpadded lengths, None = no padding


@dataclass
class RedLLMCache:
    """Decoding state: per-layer self-attention caches and cross-attention K/V (computed once)."""

    self_attn: list[KVCache]
    cross_attn: list[CrossKVCache]

    @property
    def length(self) -> int:
        return self.self_attn[0].length


class RedLLM(LanguageModel):
    def __init__(self, config: ModelConfig) -> None:
        if config.family != "redllm":
            raise ValueError(f"RedLLM needs a config with family='redllm', got {config.family!r}")
        super().__init__(config)
        self.encoder = nn.ModuleList(Block.from_config(config) for _ in range(config.n_encoder_layers))
        self.encoder_norm = RMSNorm(config.d_model, config.norm_eps)
        self.decoder = nn.ModuleList(Block.from_config(config, has_cross=True) for _ in range(config.n_decoder_layers))
        self.decoder_norm = RMSNorm(config.d_model, config.norm_eps)

    def residual_streams(self) -> dict[str, int]:
        # two separate streams: encoder blocks write twice (self-attention, FFN), decoder blocks
        # three times (self-attention, cross-attention, FFN)
        return {"encoder": 2 * len(self.encoder), "decoder": 3 * len(self.decoder)}

    def block_lists(self) -> list[nn.ModuleList]:
        return [self.encoder, self.decoder]

    def check_inputs(self, encoder_input_ids: torch.Tensor, decoder_input_ids: torch.Tensor,
                     labels: Optional[torch.Tensor] = None, *, encoder_lengths: Optional[torch.Tensor] = None,
                     values: bool = True) -> None:
        """The checks of :meth:`forward` on training inputs; ``values``: also read token ids and
        encoder lengths (free on CPU tensors: the training module calls this on the CPU batch)."""
        self._check_encoder(encoder_input_ids, encoder_lengths, values)
        self._check_ids("decoder_input_ids", decoder_input_ids, values)
        if encoder_input_ids.shape[0] != decoder_input_ids.shape[0]:
            raise ValueError(f"encoder batch ({encoder_input_ids.shape[0]}) and decoder batch "
                             f"({decoder_input_ids.shape[0]}) differ")
        if labels is not None:
            self._check_labels(labels, decoder_input_ids, values)

    def _check_encoder(self, encoder_input_ids: torch.Tensor, encoder_lengths: Optional[torch.Tensor],
                       values: bool) -> None:
        self._check_ids("encoder_input_ids", encoder_input_ids, values)
        b, s = encoder_input_ids.shape
        if encoder_lengths is not None:
            if encoder_lengths.shape != (b,):
                raise ValueError(f"encoder_lengths must have shape ({b},), got {tuple(encoder_lengths.shape)}")
            if values:
                lo, hi = (int(v) for v in torch.aminmax(encoder_lengths))
                if lo < 1 or hi > s:
                    raise ValueError(f"encoder_lengths must lie in [1, {s}] (the padded encoder length), "
                                     f"got {lo if lo < 1 else hi}")

    # ------------------------------------------------------------------ encoder
    def encode(self, encoder_input_ids: torch.Tensor, encoder_lengths: Optional[torch.Tensor] = None) -> EncoderOutput:
        """encoder_input_ids: (B, S) right-padded; encoder_lengths: (B,) or None (no padding)."""
        self._check_encoder(encoder_input_ids, encoder_lengths, self._check_values())
        b, s = encoder_input_ids.shape
        device = encoder_input_ids.device
        mask = None
        if encoder_lengths is not None:
            encoder_lengths = encoder_lengths.to(device)
            # pad queries see the real keys too, so no row is fully masked; their outputs are ignored
            mask = build_mask(padding(encoder_lengths), b, s, s, device)
        positions = torch.arange(s, device=device).expand(b, s)
        cos, sin = self.rope_tables(positions, max_position=s - 1)
        inputs = AttentionInputs(cos=cos, sin=sin, mask=mask, is_causal=False)
        x = self.embed(encoder_input_ids)  # (B, S, C)
        for layer in self.encoder:
            x = layer(x, inputs)
        return EncoderOutput(self.encoder_norm(x), encoder_lengths)

    # ------------------------------------------------------------------ decoder
    def init_cache(self, batch: int, max_len: int, dtype: Optional[torch.dtype] = None,
                   device: Optional[torch.device] = None) -> RedLLMCache:
        return RedLLMCache(self_attn=self._kv_caches(len(self.decoder), batch, max_len, dtype, device),
                           cross_attn=[CrossKVCache() for _ in self.decoder])

    def decode(self, decoder_input_ids: torch.Tensor, encoder: EncoderOutput,
               labels: Optional[torch.Tensor] = None, *, cache: Optional[RedLLMCache] = None,
               cache_index: Optional[torch.Tensor] = None,
               z_loss: float = 0.0, return_logits: Optional[bool | str] = None) -> ModelOutput:
        """decoder_input_ids: (B, T) -> logits (B, T, V) and/or loss against labels (B, T).

        ``cache_index`` (T,) long device tensor: static-cache decoding -- the decoder tokens are
        those at decoder offsets ``cache_index`` (= their cache slots), their keys/values are
        written there and attention reads every slot up to its own (``KVCache.write``); no host
        value is read, so each step has the same shapes and one compiled graph serves them all.
        """
        self._check_ids("decoder_input_ids", decoder_input_ids)
        b, t = decoder_input_ids.shape
        enc, lengths = encoder.hidden, encoder.lengths
        if enc.shape[0] != b:
            raise ValueError(f"encoder batch ({enc.shape[0]}) and decoder batch ({b}) differ")
        if labels is not None:
            self._check_labels(labels, decoder_input_ids)
        s = enc.shape[1]
        device = decoder_input_ids.device
        if cache_index is not None and (cache is None or cache_index.shape != (t,)):
            raise ValueError(f"static-cache decoding needs a cache and cache_index of shape ({t},)")
        past = cache.length if cache is not None and cache_index is None else 0

        k = lengths if lengths is not None else torch.full((b,), s, device=device, dtype=torch.long)
        if cache_index is None:
            offsets = torch.arange(past, past + t, device=device)
            bound = s + past + t - 1
        else:  # decoder offset = cache slot; the cache length bounds it on the host
            offsets, bound = cache_index, s + cache.self_attn[0].max_len - 1
        dec_pos = k.view(b, 1) + offsets.view(1, t)  # (B, T)
        cos, sin = self.rope_tables(dec_pos, max_position=bound)
        enc_cos = enc_sin = None
        if cache is None or cache.cross_attn[0].k is None:  # cached cross K/V are already rotated
            enc_pos = torch.arange(s, device=device).expand(b, s)
            enc_cos, enc_sin = self.rope_tables(enc_pos, max_position=s - 1)

        if cache_index is not None:
            self_mask = build_mask(slots_upto(cache_index), b, t, cache.self_attn[0].max_len, device)
        else:
            self_mask = build_mask(causal, b, t, past + t, device, q_offset=past) if past > 0 and t > 1 else None
        self_inputs = AttentionInputs(cos=cos, sin=sin, mask=self_mask, is_causal=self_mask is None and t > 1,
                                      cache_index=cache_index)
        cross_mask = build_mask(padding(lengths), b, t, s, device) if lengths is not None else None
        cross_inputs = AttentionInputs(cos=cos, sin=sin, kv_cos=enc_cos, kv_sin=enc_sin, mask=cross_mask)

        x = self.embed(decoder_input_ids)  # (B, T, C)
        for i, layer in enumerate(self.decoder):
            x = layer(x, self_inputs, cross_inputs=cross_inputs, encoder_out=enc,
                      cache=cache.self_attn[i] if cache else None,
                      cross_cache=cache.cross_attn[i] if cache else None)
        x = self.decoder_norm(x)
        return self.lm_output(x, labels, z_loss, return_logits)

    def forward(self, encoder_input_ids: Optional[torch.Tensor], decoder_input_ids: torch.Tensor,
                labels: Optional[torch.Tensor] = None, *, encoder_lengths: Optional[torch.Tensor] = None,
                encoder_outputs: Optional[EncoderOutput] = None, cache: Optional[RedLLMCache] = None,
                cache_index: Optional[torch.Tensor] = None,
                z_loss: float = 0.0, return_logits: Optional[bool | str] = None) -> ModelOutput:
        """Encode then decode; or, with ``encoder_outputs``, decode only (incremental generation).

        Args:
            encoder_input_ids: (B, S) encoder tokens, right-padded (None when ``encoder_outputs`` is given).
            decoder_input_ids: (B, T) decoder inputs (targets shifted right behind a bos).
            labels: (B, T) decoder targets, -100 = ignore.
            encoder_lengths: (B,) unpadded encoder lengths (None: no padding).
            encoder_outputs: a previous :meth:`encode` result to decode against.
            cache: decoding state from :meth:`init_cache`.
            cache_index: static-cache decoding (see :meth:`decode`).
            z_loss: weight of the z-loss term.

        Decoding steps should come through here rather than :meth:`decode` when the model is
        sharded: a sharding wrapper (FSDP, DeepSpeed ZeRO-3) gathers the tied output projection for
        the model's own forward, not for a bare method call.
        """
        if encoder_outputs is None:
            if encoder_input_ids is None:
                raise ValueError("RedLLM.forward needs encoder_input_ids or encoder_outputs")
            # encode() and decode() check their ids (and decode the batch sizes): no second device sync here
            encoder_outputs = self.encode(encoder_input_ids, encoder_lengths)
        return self.decode(decoder_input_ids, encoder_outputs, labels, cache=cache, cache_index=cache_index,
                           z_loss=z_loss, return_logits=return_logits)
