"""DecLLM and RedLLM (arXiv 2510.26622, "Encoder-Decoder or Decoder-Only? Revisiting Encoder-Decoder
LLM") for Hugging Face ``transformers``.

Copied into every exported model folder by ``python -m lightning_redllm export --format hf``; imports
only ``torch`` and ``transformers``, so ``AutoModelForCausalLM`` / ``AutoModelForSeq2SeqLM``
``.from_pretrained(folder, trust_remote_code=True)`` work with no network and no lightning_redllm.
The computation is lightning_redllm's, operation for operation (so the logits agree to fp32 rounding):

* pre-norm blocks with a learned RMSNorm, SwiGLU feed-forward, no biases; one embedding matrix is the
  input embedding of every stack and the output projection (``logits = h @ E^T``);
* attention: parameter-free RMSNorm of Q, K and V over the head dim (``qkv_norm``), RoPE in the
  rotate-half layout with fp64-built tables, ``F.scaled_dot_product_attention``, and (RedLLM, every
  attention) a parameter-free RMSNorm of each head's output before ``o_proj`` (``attn_out_norm``);
* DecLLM: causal; RoPE positions count real tokens (left padding is position-free), so a left-padded
  row computes what it computes alone. DecLLM + BiAttn (``config.bidirectional_prefix``): the first
  ``prefix_lengths[b]`` real tokens of row ``b`` (bos + prompt) attend each other bidirectionally;
  ``forward(..., prefix_lengths=)`` takes them, ``generate()`` defaults them to the whole prompt
  (every real token of ``input_ids``), which is how the model was tuned; a forward without
  ``prefix_lengths`` is plain causal;
* RedLLM: bidirectional encoder at positions ``0..k-1`` (``k`` = the row's unpadded length, from
  ``attention_mask``), causal decoder at positions ``k, k+1, ...`` (continuous with the encoder),
  cross-attention queries rotated with the decoder positions and keys with the encoder positions.

Shapes: B batch, T query length, S key length, H query heads, G key/value heads, D head dim.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput, CausalLMOutputWithPast, Seq2SeqLMOutput

from .configuration_lightning_redllm import LightningDecLLMConfig, LightningRedLLMConfig

IGNORE_INDEX = -100


# --------------------------------------------------------------------------- transformers versions
def _with_cache(output_cls, cache, **fields):
    """Build an output whose cache field is ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    names = {f.name for f in dataclasses.fields(output_cls)}
    return output_cls(**fields, **{("cache" if "cache" in names else "past_key_values"): cache})


def _new_dynamic_cache(config) -> DynamicCache:
    try:
        return DynamicCache(config=config)
    except TypeError:  # older transformers: no config argument
        return DynamicCache()


def _layer_kv(cache: DynamicCache, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(cache, "layers"):
        return cache.layers[idx].keys, cache.layers[idx].values
    return cache.key_cache[idx], cache.value_cache[idx]


# --------------------------------------------------------------------------- primitives
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Parameter-free RMSNorm over the last dim, computed in >= fp32, returned in x's dtype."""
    return F.rms_norm(x.to(_compute_dtype(x.dtype)), (x.shape[-1],), eps=eps).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(x.dtype)
        return (F.rms_norm(x.to(dtype), (x.shape[-1],), eps=self.eps) * self.weight.to(dtype)).to(x.dtype)


class Rope:
    """cos/sin tables (fp32, fp64 for an fp64 model) built in fp64 on the host and rounded once;
    grown by doubling when a larger position appears. A plain attribute, never in the state dict."""

    def __init__(self, head_dim: int, theta: float, max_len: int) -> None:
        self.head_dim, self.theta, self.max_len = head_dim, float(theta), int(max_len)
        self.cos = self.sin = None

    def __call__(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (B, T) -> cos, sin (B, 1, T, D/2)."""
        needed = int(positions.max()) + 1 if positions.numel() else 1
        if (self.cos is None or self.cos.shape[0] < needed or self.cos.device != positions.device
                or self.cos.dtype != dtype):
            length = self.max_len
            while length < needed:
                length *= 2
            exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim
            inv_freq = 1.0 / (self.theta ** exponent)  # (D/2,)
            freqs = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)  # (L, D/2)
            self.cos = freqs.cos().to(device=positions.device, dtype=dtype)
            self.sin = freqs.sin().to(device=positions.device, dtype=dtype)
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE of x (B, H, T, D) with tables (B, 1, T, D/2)."""
    half = x.shape[-1] // 2
    xf = x.to(torch.promote_types(x.dtype, cos.dtype))
    x1, x2 = xf[..., :half], xf[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, ffn_dim: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, ffn_dim, bias=False)
        self.up_proj = nn.Linear(d_model, ffn_dim, bias=False)
        self.down_proj = nn.Linear(ffn_dim, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Attention(nn.Module):
    """Self- or cross-attention with the study's normalizations; KV cached in a transformers Cache."""

    def __init__(self, config, out_norm: bool, is_cross: bool = False) -> None:
        super().__init__()
        c = config
        self.n_heads, self.n_kv_heads, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.qkv_norm, self.out_norm, self.eps, self.dropout = c.qkv_norm, out_norm, c.rms_norm_eps, c.dropout
        self.is_cross = is_cross
        self.q_proj = nn.Linear(c.hidden_size, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, c.hidden_size, bias=False)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, n, self.head_dim).transpose(1, 2)  # (B, n, T, D)

    def _project_kv(self, src: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        k = self._heads(self.k_proj(src), self.n_kv_heads)  # (B, G, S, D)
        v = self._heads(self.v_proj(src), self.n_kv_heads)
        if self.qkv_norm:
            k, v = rms_norm(k, self.eps), rms_norm(v, self.eps)
        return apply_rope(k, cos, sin), v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: Optional[torch.Tensor],
                is_causal: bool, layer_idx: int, cache=None, kv_input: Optional[torch.Tensor] = None,
                kv_cos: Optional[torch.Tensor] = None, kv_sin: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). Self-attention appends to ``cache`` (a DynamicCache); cross-attention
        stores the encoder keys/values in ``cache`` (the cross-attention DynamicCache) once."""
        b, t, _ = x.shape
        q = self._heads(self.q_proj(x), self.n_heads)  # (B, H, T, D)
        if self.qkv_norm:
            q = rms_norm(q, self.eps)
        q = apply_rope(q, cos, sin)
        if self.is_cross:
            if cache is not None and cache.get_seq_length(layer_idx) > 0:
                k, v = _layer_kv(cache, layer_idx)  # already normed and rotated
            else:
                k, v = self._project_kv(kv_input, kv_cos, kv_sin)
                if cache is not None:
                    k, v = cache.update(k, v, layer_idx)
        else:
            k, v = self._project_kv(x, cos, sin)
            if cache is not None:
                k, v = cache.update(k, v, layer_idx)  # (B, G, past + T, D)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
            dropout_p=self.dropout if self.training else 0.0, enable_gqa=self.n_heads != self.n_kv_heads,
        )  # (B, H, T, D)
        if self.out_norm:
            out = rms_norm(out, self.eps)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class Block(nn.Module):
    """Pre-norm block: self-attention, (decoder of RedLLM) cross-attention, SwiGLU."""

    def __init__(self, config, out_norm: bool, has_cross: bool = False) -> None:
        super().__init__()
        eps = config.rms_norm_eps
        self.attn_norm = RMSNorm(config.hidden_size, eps)
        self.self_attn = Attention(config, out_norm)
        self.has_cross = has_cross
        if has_cross:
            self.cross_norm = RMSNorm(config.hidden_size, eps)
            self.cross_attn = Attention(config, out_norm, is_cross=True)
        self.mlp_norm = RMSNorm(config.hidden_size, eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, cos, sin, mask, is_causal, layer_idx, cache=None, cross=None, cross_cache=None):
        x = x + self.resid_dropout(self.self_attn(self.attn_norm(x), cos, sin, mask, is_causal, layer_idx, cache))
        if self.has_cross:
            enc, enc_cos, enc_sin, cross_mask = cross
            h = self.cross_attn(self.cross_norm(x), cos, sin, cross_mask, False, layer_idx, cross_cache,
                                kv_input=enc, kv_cos=enc_cos, kv_sin=enc_sin)
            x = x + self.resid_dropout(h)
        return x + self.resid_dropout(self.mlp(self.mlp_norm(x)))


def _mark_residual_writes(blocks: nn.ModuleList, writes: int) -> None:
    """o_proj / down_proj init std is initializer_range / sqrt(residual writes of their stream)."""
    for block in blocks:
        for module in block.modules():
            for name in ("o_proj", "down_proj"):
                if hasattr(module, name):
                    getattr(module, name)._residual_writes = writes


def _check_mask(name: str, mask: Optional[torch.Tensor], shape: tuple[int, int]) -> None:
    if mask is not None and tuple(mask.shape) != shape:
        raise ValueError(f"{name} must be a 2D (batch, keys) mask of shape {shape}, got {tuple(mask.shape)}")


class _LightningPreTrainedModel(PreTrainedModel):
    base_model_prefix = "lightning_redllm"  # no attribute of that name: the state dict keys are the model's own
    supports_gradient_checkpointing = False
    _no_split_modules = ["Block"]

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std / math.sqrt(getattr(module, "_residual_writes", 1)))
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed = value

    def get_output_embeddings(self):
        return None  # the output projection *is* the input embedding (``lm_logits``): nothing to tie

    def lm_logits(self, hidden: torch.Tensor, logits_to_keep=0) -> torch.Tensor:
        if isinstance(logits_to_keep, int):
            hidden = hidden[:, -logits_to_keep:] if logits_to_keep > 0 else hidden
        else:
            hidden = hidden[:, logits_to_keep]
        return hidden @ self.embed.weight.t()  # (B, T, V)

    def rope_tables(self, positions: torch.Tensor):
        return self.rope(positions, _compute_dtype(self.embed.weight.dtype))


# --------------------------------------------------------------------------- DecLLM
class LightningDecLLMForCausalLM(_LightningPreTrainedModel, GenerationMixin):
    config_class = LightningDecLLMConfig

    def __init__(self, config: LightningDecLLMConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, config.attn_out_norm) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        _mark_residual_writes(self.layers, 2 * config.num_hidden_layers)
        self.rope = Rope(config.head_dim, config.rope_theta, config.max_position_embeddings)
        self.post_init()

    def forward(self, input_ids: Optional[torch.LongTensor] = None, attention_mask: Optional[torch.Tensor] = None,
                position_ids: Optional[torch.LongTensor] = None, past_key_values=None,
                inputs_embeds: Optional[torch.Tensor] = None, labels: Optional[torch.LongTensor] = None,
                use_cache: Optional[bool] = None, prefix_lengths: Optional[torch.Tensor] = None,
                logits_to_keep=0, return_dict: Optional[bool] = None, cache=None, **kwargs):
        """
        input_ids (B, T); attention_mask (B, past + T), 0 for (left) padding; position_ids (B, T)
        default: real tokens counted from 0 (``attention_mask.cumsum(-1) - 1``); labels (B, T): the
        usual causal-LM labels (shifted inside, -100 ignored); prefix_lengths (B,): DecLLM + BiAttn,
        the first ``prefix_lengths[b]`` real tokens of row ``b`` attend bidirectionally.
        """
        cache = cache if cache is not None else past_key_values
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        b, t = x.shape[:2]
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if use_cache and cache is None:
            cache = _new_dynamic_cache(self.config)
        past = cache.get_seq_length() if cache is not None else 0
        device = x.device
        _check_mask("attention_mask", attention_mask, (b, past + t))

        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
            else:
                position_ids = torch.arange(past, past + t, device=device).expand(b, t)
        cos, sin = self.rope_tables(position_ids)

        mask = None
        if attention_mask is not None or prefix_lengths is not None or (past > 0 and t > 1):
            q = torch.arange(past, past + t, device=device).view(1, 1, t, 1)
            k = torch.arange(past + t, device=device).view(1, 1, 1, past + t)
            allowed = k <= q  # causal
            if prefix_lengths is not None:
                prefix_lengths = torch.as_tensor(prefix_lengths, device=device).view(b, 1)
                if attention_mask is not None:  # counted from each row's first real token
                    valid = attention_mask.bool()
                    in_prefix = valid & ((attention_mask.long().cumsum(-1) - 1) < prefix_lengths)
                else:
                    in_prefix = torch.arange(past + t, device=device).view(1, -1) < prefix_lengths
                allowed = allowed | in_prefix.view(b, 1, 1, past + t)
            if attention_mask is not None:
                # the diagonal keeps fully padded query rows finite; their outputs are never used
                allowed = (allowed & attention_mask.bool().view(b, 1, 1, past + t)) | (k == q)
            mask = allowed.expand(b, 1, t, past + t)

        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, mask is None and t > 1, i, cache=cache)
        x = self.norm(x)

        loss = None
        if labels is not None:
            logits = self.lm_logits(x)
            shift = logits[:, :-1].float().reshape(-1, logits.shape[-1])
            loss = F.cross_entropy(shift, labels[:, 1:].reshape(-1).to(device), ignore_index=IGNORE_INDEX)
            if logits_to_keep:
                logits = self.lm_logits(x, logits_to_keep)
        else:
            logits = self.lm_logits(x, logits_to_keep)
        return _with_cache(CausalLMOutputWithPast, cache if use_cache else None, loss=loss, logits=logits)

    @torch.no_grad()
    def generate(self, inputs: Optional[torch.Tensor] = None, *args, prefix_lengths=None, **kwargs):
        """``transformers`` generation; a DecLLM + BiAttn model attends the prompt (every real token of
        ``input_ids``, bos included) bidirectionally unless ``prefix_lengths`` says otherwise."""
        if self.config.bidirectional_prefix and prefix_lengths is None:
            ids = inputs if inputs is not None else kwargs.get("input_ids")
            if ids is not None:
                mask = kwargs.get("attention_mask")
                if mask is None:
                    pad = kwargs.get("pad_token_id", self.generation_config.pad_token_id)
                    mask = ids != pad if pad is not None else torch.ones_like(ids, dtype=torch.bool)
                prefix_lengths = mask.long().sum(-1)
        if prefix_lengths is not None:
            kwargs["prefix_lengths"] = prefix_lengths
        return super().generate(inputs, *args, **kwargs)


# --------------------------------------------------------------------------- RedLLM
class EncoderStack(nn.ModuleList):
    """RedLLM's encoder blocks (state-dict names ``encoder.0...`` as in lightning_redllm), callable as the
    encoder ``generate()`` runs once: ``forward(input_ids, attention_mask)`` -> final-normed states."""

    main_input_name = "input_ids"

    def forward(self, input_ids: Optional[torch.LongTensor] = None, attention_mask: Optional[torch.Tensor] = None,
                inputs_embeds: Optional[torch.Tensor] = None, return_dict: Optional[bool] = None, **kwargs):
        return self._owner.encode(input_ids, attention_mask, inputs_embeds)


class LightningRedLLMForConditionalGeneration(_LightningPreTrainedModel, GenerationMixin):
    config_class = LightningRedLLMConfig

    def __init__(self, config: LightningRedLLMConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.encoder = EncoderStack(Block(config, config.attn_out_norm) for _ in range(config.encoder_layers))
        object.__setattr__(self.encoder, "_owner", self)  # a back reference, not a submodule
        self.encoder_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.decoder = nn.ModuleList(Block(config, config.attn_out_norm, has_cross=True)
                                     for _ in range(config.decoder_layers))
        self.decoder_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        _mark_residual_writes(self.encoder, 2 * config.encoder_layers)
        _mark_residual_writes(self.decoder, 3 * config.decoder_layers)
        self.rope = Rope(config.head_dim, config.rope_theta, config.max_position_embeddings)
        self.post_init()

    def get_encoder(self, *args, **kwargs) -> EncoderStack:
        return self.encoder

    @staticmethod
    def _encoder_positions(attention_mask: Optional[torch.Tensor], b: int, s: int, device) -> torch.Tensor:
        if attention_mask is None:
            return torch.arange(s, device=device).expand(b, s)
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # real tokens at 0..k-1

    def encode(self, input_ids=None, attention_mask=None, inputs_embeds=None) -> BaseModelOutput:
        """Encoder tokens (B, S), right-padded (``attention_mask`` 0 on padding) -> final-normed states."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("the encoder needs exactly one of input_ids and inputs_embeds")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # (B, S, C)
        b, s = x.shape[:2]
        _check_mask("attention_mask", attention_mask, (b, s))
        cos, sin = self.rope_tables(self._encoder_positions(attention_mask, b, s, x.device))
        mask = None
        if attention_mask is not None:  # padded keys hidden; padded queries see the real keys
            mask = attention_mask.bool().view(b, 1, 1, s).expand(b, 1, s, s)
        for i, layer in enumerate(self.encoder):
            x = layer(x, cos, sin, mask, False, i)
        return BaseModelOutput(last_hidden_state=self.encoder_norm(x))

    @staticmethod
    def _shift_right(labels: torch.Tensor, start: int, pad: int) -> torch.Tensor:
        shifted = labels.new_full(labels.shape, start)
        shifted[:, 1:] = labels[:, :-1]
        return shifted.masked_fill(shifted == IGNORE_INDEX, pad)

    def forward(self, input_ids: Optional[torch.LongTensor] = None, attention_mask: Optional[torch.Tensor] = None,
                decoder_input_ids: Optional[torch.LongTensor] = None,
                decoder_attention_mask: Optional[torch.Tensor] = None, encoder_outputs=None, past_key_values=None,
                inputs_embeds: Optional[torch.Tensor] = None, decoder_inputs_embeds: Optional[torch.Tensor] = None,
                labels: Optional[torch.LongTensor] = None, use_cache: Optional[bool] = None, logits_to_keep=0,
                return_dict: Optional[bool] = None, cache=None, **kwargs):
        """
        input_ids (B, S): encoder tokens, right-padded, ``attention_mask`` (B, S) 0 on padding;
        decoder_input_ids (B, T): default ``labels`` shifted right behind ``decoder_start_token_id``;
        labels (B, T): decoder targets, -100 ignored.
        """
        cache = cache if cache is not None else past_key_values
        if encoder_outputs is None:
            encoder_outputs = self.encode(input_ids, attention_mask, inputs_embeds)
        enc = encoder_outputs.last_hidden_state if hasattr(encoder_outputs, "last_hidden_state") else encoder_outputs[0]
        b, s = enc.shape[:2]
        device = enc.device
        _check_mask("attention_mask", attention_mask, (b, s))
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            if labels is None:
                raise ValueError("pass decoder_input_ids (or labels, shifted right into the decoder inputs)")
            decoder_input_ids = self._shift_right(labels, self.config.decoder_start_token_id, self.config.pad_token_id)
        x = self.embed(decoder_input_ids) if decoder_inputs_embeds is None else decoder_inputs_embeds  # (B, T, C)
        t = x.shape[1]
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if use_cache and cache is None:
            cache = EncoderDecoderCache(_new_dynamic_cache(self.config), _new_dynamic_cache(self.config))
        self_cache = cache.self_attention_cache if cache is not None else None
        cross_cache = cache.cross_attention_cache if cache is not None else None
        past = self_cache.get_seq_length() if self_cache is not None else 0
        _check_mask("decoder_attention_mask", decoder_attention_mask, (b, past + t))

        # continuous positions: the decoder continues after each row's unpadded encoder length k
        k = attention_mask.long().sum(-1) if attention_mask is not None else torch.full((b,), s, device=device)
        dec_pos = k.view(b, 1) + torch.arange(past, past + t, device=device).view(1, t)  # (B, T)
        cos, sin = self.rope_tables(dec_pos)
        enc_cos, enc_sin = self.rope_tables(self._encoder_positions(attention_mask, b, s, device))

        self_mask = None
        if decoder_attention_mask is not None or (past > 0 and t > 1):
            q = torch.arange(past, past + t, device=device).view(1, 1, t, 1)
            kk = torch.arange(past + t, device=device).view(1, 1, 1, past + t)
            allowed = kk <= q
            if decoder_attention_mask is not None:
                allowed = (allowed & decoder_attention_mask.bool().view(b, 1, 1, past + t)) | (kk == q)
            self_mask = allowed.expand(b, 1, t, past + t)
        cross_mask = None
        if attention_mask is not None:
            cross_mask = attention_mask.bool().view(b, 1, 1, s).expand(b, 1, t, s)
        cross = (enc, enc_cos, enc_sin, cross_mask)
        for i, layer in enumerate(self.decoder):
            x = layer(x, cos, sin, self_mask, self_mask is None and t > 1, i, cache=self_cache, cross=cross,
                      cross_cache=cross_cache)
        if cache is not None and hasattr(cache, "is_updated"):
            for i in range(len(self.decoder)):
                cache.is_updated[i] = True
        x = self.decoder_norm(x)

        loss = None
        logits = self.lm_logits(x, 0 if labels is not None else logits_to_keep)
        if labels is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1).to(device),
                                   ignore_index=IGNORE_INDEX)
        return _with_cache(Seq2SeqLMOutput, cache if use_cache else None, loss=loss, logits=logits,
                           encoder_last_hidden_state=enc)


__all__ = ["LightningDecLLMForCausalLM", "LightningRedLLMForConditionalGeneration"]
