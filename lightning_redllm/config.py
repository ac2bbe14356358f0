"""Model configuration: one dataclass for both families, named presets, FLOPs per token.

The presets are the study's sizes (arXiv 2510.26622, Table 1): head dim 128, SwiGLU, tied
embeddings, vocab 32,768. ``tiny`` presets exist for tests and the CPU quickstart; they use the
bundled 4K BPE tokenizer, hence ``vocab_size=4096``.

``ModelConfig`` round-trips through YAML (``to_dict`` / ``from_dict``; every field is a plain
scalar) and validates itself in ``__post_init__`` with ``ValueError``s that name the field.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Literal, Optional

Family = Literal["redllm", "decllm"]
FAMILIES = ("redllm", "decllm")


@dataclass
class ModelConfig:
    """Architecture of a RedLLM (encoder-decoder) or DecLLM (decoder-only) model.

    Args:
        family: ``"redllm"`` (encoder-decoder, prefix LM) or ``"decllm"`` (decoder-only, causal LM).
        name: preset name, informational.
        vocab_size: rows of the (single, tied) embedding matrix; must be >= the tokenizer's vocab.
        d_model: residual width.
        n_heads: query heads.
        n_kv_heads: key/value heads (GQA); ``None`` means ``n_heads`` (the study uses MHA).
        head_dim: per-head width (128 in the study).
        ffn_dim: SwiGLU hidden width.
        n_layers: DecLLM decoder layers (ignored by RedLLM).
        n_encoder_layers: RedLLM encoder layers (ignored by DecLLM).
        n_decoder_layers: RedLLM decoder layers (ignored by DecLLM).
        rope_theta: RoPE base.
        max_seq_len: initial RoPE table length; the table grows on demand for longer inputs.
        norm_eps: epsilon of every RMSNorm.
        qkv_norm: parameter-free RMSNorm on Q, K and V over the head dim (study: on, both families).
        attn_out_norm: parameter-free RMSNorm of each head's attention output before the output
            projection. ``None`` picks the study's choice: on for RedLLM, off for DecLLM.
        bidirectional_prefix: DecLLM only: the model attends its prompt (bos + inputs)
            bidirectionally, the study's "DecLLM + BiAttn". Set by instruction tuning with it and
            recorded in every checkpoint, so generation, scoring and ``evaluate`` attend the prompt
            the way the model was tuned.
        dropout: residual-branch and attention dropout (study: 0 pretraining, 0.05 finetuning).
        init_std: std of the normal init of embeddings and input projections.
        loss_chunk_tokens: tokens per chunk of the fused output-projection + cross-entropy.
    """

    family: Family = "decllm"
    name: str = ""
    vocab_size: int = 32768
    d_model: int = 1024
    n_heads: int = 8
    n_kv_heads: Optional[int] = None
    head_dim: int = 128
    ffn_dim: int = 4096
    n_layers: int = 8
    n_encoder_layers: int = 3
    n_decoder_layers: int = 3
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    norm_eps: float = 1e-6
    qkv_norm: bool = True
    attn_out_norm: Optional[bool] = None
    bidirectional_prefix: bool = False
    dropout: float = 0.0
    init_std: float = 0.02
    loss_chunk_tokens: int = 4096

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"ModelConfig.family must be one of {FAMILIES}, got {self.family!r}")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.attn_out_norm is None:
            self.attn_out_norm = self.family == "redllm"
        positive = ["vocab_size", "d_model", "n_heads", "n_kv_heads", "head_dim", "ffn_dim",
                    "max_seq_len", "loss_chunk_tokens"]
        positive += ["n_layers"] if self.family == "decllm" else ["n_encoder_layers", "n_decoder_layers"]
        for key in positive:
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{key} must be a positive integer, got {value!r}")
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(
                f"ModelConfig.n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(f"ModelConfig.head_dim must be even for RoPE, got {self.head_dim}")
        if self.bidirectional_prefix and self.family != "decllm":
            raise ValueError("ModelConfig.bidirectional_prefix is a DecLLM option (RedLLM's encoder is always "
                             f"bidirectional), got family={self.family!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.rope_theta <= 0 or self.norm_eps <= 0 or self.init_std <= 0:
            raise ValueError("ModelConfig.rope_theta, norm_eps and init_std must be positive")

    # ------------------------------------------------------------------ derived
    @property
    def n_blocks(self) -> int:
        """Total transformer blocks (both stacks for RedLLM)."""
        if self.family == "decllm":
            return self.n_layers
        return self.n_encoder_layers + self.n_decoder_layers

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "ModelConfig":
        """A named preset (``redllm-1b``, ``decllm-tiny``...) with optional field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; available: {sorted(PRESETS)}")
        data = dict(PRESETS[name])
        data["name"] = name
        data.update(overrides)
        return cls.from_dict(data)


# --------------------------------------------------------------------------- presets
# (d_model, ffn_dim, n_heads, DecLLM layers, RedLLM layers per stack, vocab, head_dim)
_SIZES = {
    "tiny": (128, 384, 4, 4, 2, 4096, 32),
    "150m": (1024, 4096, 8, 8, 3, 32768, 128),
    "1b": (2048, 8192, 16, 16, 7, 32768, 128),
    "2b": (2560, 10240, 20, 20, 9, 32768, 128),
    "4b": (3072, 12288, 24, 24, 10, 32768, 128),
    "8b": (4096, 16384, 32, 32, 14, 32768, 128),
}

PRESETS: dict[str, dict[str, Any]] = {}
for _size, (_d, _ffn, _h, _dec_layers, _red_layers, _vocab, _hd) in _SIZES.items():
    _common = dict(d_model=_d, ffn_dim=_ffn, n_heads=_h, vocab_size=_vocab, head_dim=_hd)
    if _size == "tiny":
        _common["max_seq_len"] = 512
    PRESETS[f"decllm-{_size}"] = dict(family="decllm", n_layers=_dec_layers, **_common)
    PRESETS[f"redllm-{_size}"] = dict(
        family="redllm", n_encoder_layers=_red_layers, n_decoder_layers=_red_layers, **_common
    )


# --------------------------------------------------------------------------- parameters and FLOPs
def _attn_params(cfg: ModelConfig) -> int:
    q_out = cfg.n_heads * cfg.head_dim
    kv_out = cfg.n_kv_heads * cfg.head_dim
    return cfg.d_model * (q_out + 2 * kv_out) + q_out * cfg.d_model


def _mlp_params(cfg: ModelConfig) -> int:
    return 3 * cfg.d_model * cfg.ffn_dim


def num_parameters(cfg: ModelConfig) -> int:
    """Analytic parameter count (tied embeddings counted once, norms included)."""
    norm = cfg.d_model
    block = _attn_params(cfg) + _mlp_params(cfg) + 2 * norm
    emb = cfg.vocab_size * cfg.d_model
    if cfg.family == "decllm":
        return emb + cfg.n_layers * block + norm
    dec_block = block + _attn_params(cfg) + norm
    return emb + cfg.n_encoder_layers * block + cfg.n_decoder_layers * dec_block + 2 * norm


def non_embedding_parameters(cfg: ModelConfig) -> int:
    """:func:`num_parameters` without the (tied) embedding matrix: the N of scaling laws (Kaplan et al.
    2020 count non-embedding parameters; at small sizes the embedding would dominate the count)."""
    return num_parameters(cfg) - cfg.vocab_size * cfg.d_model


def forward_flops_per_sequence(cfg: ModelConfig, seq_len: int, prefix_len: Optional[int] = None) -> int:
    """Matmul FLOPs (2 per multiply-add) of one forward pass over one training sequence.

    DecLLM processes all ``seq_len`` tokens through every layer; RedLLM runs ``prefix_len``
    tokens through the encoder and ``seq_len - prefix_len`` through the decoder (self + cross
    attention), so at equal parameters it spends about half the compute per sequence.
    Attention score/value products are counted in full (no causal halving), matching
    ``torch.utils.flop_counter``; norms, RoPE, softmax and activations are ignored.
    """
    d, hd, nh = cfg.d_model, cfg.head_dim, cfg.n_heads
    q_out, kv_out = nh * hd, cfg.n_kv_heads * hd

    def self_attn(t: int) -> int:
        proj = 2 * t * (d * (q_out + 2 * kv_out) + q_out * d)
        scores = 2 * 2 * t * t * q_out  # QK^T and AV
        return proj + scores

    def cross_attn(tq: int, tk: int) -> int:
        proj = 2 * tq * d * q_out + 2 * tk * d * 2 * kv_out + 2 * tq * q_out * d
        return proj + 2 * 2 * tq * tk * q_out

    def mlp(t: int) -> int:
        return 2 * t * 3 * d * cfg.ffn_dim

    if cfg.family == "decllm":
        return cfg.n_layers * (self_attn(seq_len) + mlp(seq_len)) + 2 * seq_len * d * cfg.vocab_size
    p = seq_len // 2 if prefix_len is None else prefix_len
    if not 0 < p < seq_len:
        raise ValueError(f"prefix_len must be in (0, {seq_len}), got {p}")
    t = seq_len - p
    enc = cfg.n_encoder_layers * (self_attn(p) + mlp(p))
    dec = cfg.n_decoder_layers * (self_attn(t) + cross_attn(t, p) + mlp(t))
    return enc + dec + 2 * t * d * cfg.vocab_size


def training_flops_per_sequence(cfg: ModelConfig, seq_len: int, prefix_len: Optional[int] = None) -> int:
    """Forward + backward FLOPs of one sequence (backward = 2x forward)."""
    return 3 * forward_flops_per_sequence(cfg, seq_len, prefix_len)


def training_flops_per_token(cfg: ModelConfig, seq_len: int, prefix_len: Optional[int] = None) -> float:
    """Training FLOPs per *input* token of a ``seq_len`` sequence (used for MFU)."""
    return training_flops_per_sequence(cfg, seq_len, prefix_len) / seq_len


__all__ = [
    "ModelConfig",
    "PRESETS",
    "FAMILIES",
    "num_parameters",
    "non_embedding_parameters",
    "forward_flops_per_sequence",
    "training_flops_per_sequence",
    "training_flops_per_token",
]
