"""The shared block library (imports only torch): norms, RoPE, masks, attention, MLP, block, loss."""
from .attention import Attention, AttentionInputs, CrossKVCache, KVCache
from .block import Block
from .loss import IGNORE_INDEX, LossOutput, linear_cross_entropy, reference_cross_entropy
from .masks import (and_masks, bidirectional, build_mask, causal, diagonal, key_valid, or_masks, padding, prefix,
                    slots_upto)
from .mlp import SwiGLU
from .norm import RMSNorm, rms_norm
from .rope import RotaryEmbedding, apply_rope

__all__ = [
    "Attention", "AttentionInputs", "KVCache", "CrossKVCache", "Block", "SwiGLU", "RMSNorm", "rms_norm",
    "RotaryEmbedding", "apply_rope", "IGNORE_INDEX", "LossOutput", "linear_cross_entropy",
    "reference_cross_entropy", "causal", "bidirectional", "diagonal", "padding", "key_valid", "prefix",
    "and_masks", "or_masks", "build_mask", "slots_upto",
]
