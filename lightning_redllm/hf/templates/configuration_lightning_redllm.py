"""Configurations of lightning_redllm's two model families for Hugging Face ``transformers``.

This file is copied into every exported model folder (``python -m lightning_redllm export --format hf``)
and loaded by ``AutoConfig.from_pretrained(folder, trust_remote_code=True)``. It imports only
``transformers``: the folder works without ``lightning_redllm`` installed.

* ``LightningDecLLMConfig`` (``model_type = "lightning_decllm"``): the decoder-only DecLLM.
* ``LightningRedLLMConfig`` (``model_type = "lightning_redllm"``): the encoder-decoder RedLLM.

Field names follow ``transformers`` conventions (``hidden_size``, ``num_hidden_layers``, ...); the
study's architecture switches keep their lightning_redllm names: ``qkv_norm`` (parameter-free RMSNorm
of Q, K and V over the head dim), ``attn_out_norm`` (parameter-free RMSNorm of each head's attention
output), ``bidirectional_prefix`` (DecLLM + BiAttn: the prompt attends bidirectionally), ``dropout``
(residual branches and attention probabilities, training only).
"""
from __future__ import annotations

from transformers import PretrainedConfig


class _LightningConfig(PretrainedConfig):
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    def _set_common(self, vocab_size, hidden_size, intermediate_size, num_attention_heads, num_key_value_heads,
                    head_dim, rope_theta, max_position_embeddings, rms_norm_eps, qkv_norm, dropout,
                    initializer_range, use_cache) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.head_dim = head_dim
        self.rope_theta = float(rope_theta)
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.qkv_norm = bool(qkv_norm)
        self.dropout = float(dropout)
        self.initializer_range = initializer_range
        self.use_cache = use_cache


class LightningDecLLMConfig(_LightningConfig):
    """DecLLM: a causal decoder; every input starts with ``bos`` (the tokenizer adds it)."""

    model_type = "lightning_decllm"

    def __init__(self, vocab_size=32768, hidden_size=1024, intermediate_size=4096, num_hidden_layers=8,
                 num_attention_heads=8, num_key_value_heads=None, head_dim=128, rope_theta=10000.0,
                 max_position_embeddings=2048, rms_norm_eps=1e-6, qkv_norm=True, attn_out_norm=False,
                 bidirectional_prefix=False, dropout=0.0, initializer_range=0.02, use_cache=True,
                 bos_token_id=2, eos_token_id=3, pad_token_id=0, tie_word_embeddings=True, **kwargs):
        self._set_common(vocab_size, hidden_size, intermediate_size, num_attention_heads, num_key_value_heads,
                         head_dim, rope_theta, max_position_embeddings, rms_norm_eps, qkv_norm, dropout,
                         initializer_range, use_cache)
        self.num_hidden_layers = num_hidden_layers
        self.attn_out_norm = bool(attn_out_norm)
        self.bidirectional_prefix = bool(bidirectional_prefix)
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)


class LightningRedLLMConfig(_LightningConfig):
    """RedLLM: a bidirectional encoder and a causal decoder with cross-attention; the decoder starts
    from ``decoder_start_token_id`` (the tokenizer's ``<s>``)."""

    model_type = "lightning_redllm"

    def __init__(self, vocab_size=32768, hidden_size=1024, intermediate_size=4096, encoder_layers=3,
                 decoder_layers=3, num_attention_heads=8, num_key_value_heads=None, head_dim=128,
                 rope_theta=10000.0, max_position_embeddings=2048, rms_norm_eps=1e-6, qkv_norm=True,
                 attn_out_norm=True, dropout=0.0, initializer_range=0.02, use_cache=True, bos_token_id=2,
                 eos_token_id=3, pad_token_id=0, decoder_start_token_id=2, tie_word_embeddings=True,
                 is_encoder_decoder=True, **kwargs):
        self._set_common(vocab_size, hidden_size, intermediate_size, num_attention_heads, num_key_value_heads,
                         head_dim, rope_theta, max_position_embeddings, rms_norm_eps, qkv_norm, dropout,
                         initializer_range, use_cache)
        self.encoder_layers = encoder_layers
        self.decoder_layers = decoder_layers
        self.num_hidden_layers = decoder_layers  # the layers that hold a KV cache
        self.attn_out_norm = bool(attn_out_norm)
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                         decoder_start_token_id=decoder_start_token_id, tie_word_embeddings=tie_word_embeddings,
                         is_encoder_decoder=is_encoder_decoder, **kwargs)


__all__ = ["LightningDecLLMConfig", "LightningRedLLMConfig"]
