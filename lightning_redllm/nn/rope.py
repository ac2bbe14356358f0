"""Rotary position embeddings with explicit per-example positions.

The cos/sin tables are fp32 (fp64 when an fp64 model asks for them), non-persistent (never in a
checkpoint) and built lazily on the device of the first input, so a model created on the meta
device or partitioned by ZeRO-3 gets correct tables on its real device. They grow on demand when a
longer position appears. Angles are computed in fp64 and rounded once: in fp32, ``position *
inv_freq`` alone would be off by up to ~1e-4 rad at position 2048.

Convention: the "rotate half" layout (first half of the head dim pairs with the second half),
as in HF Llama, so weights are interchangeable with that reference.
"""
from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """Holds the cos/sin tables; ``forward(positions)`` returns ``(cos, sin)`` for them.

    Args:
        head_dim: rotated width (even).
        theta: RoPE base.
        max_len: initial table length; extended (doubled) when a larger position is asked for.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0, max_len: int = 2048) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
        self.head_dim = head_dim
        self.theta = float(theta)
        self.max_len = int(max_len)
        self.register_buffer("cos", torch.empty(0), persistent=False)
        self.register_buffer("sin", torch.empty(0), persistent=False)

    def _build(self, length: int, device: torch.device, dtype: torch.dtype) -> None:
        # fp64 on the host, then one rounding to ``dtype`` on the target device
        exponent = torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim
        inv_freq = 1.0 / (self.theta ** exponent)  # (D/2,)
        t = torch.arange(length, dtype=torch.float64)
        freqs = torch.outer(t, inv_freq)  # (L, D/2)
        self.cos = freqs.cos().to(device=device, dtype=dtype)
        self.sin = freqs.sin().to(device=device, dtype=dtype)

    def forward(self, positions: torch.Tensor, max_position: int | None = None,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """positions: (B, T) int -> cos, sin: (B, 1, T, D/2) in ``dtype``, ready to broadcast over heads.

        ``max_position`` is an upper bound of ``positions`` known on the host; giving it avoids a
        device sync (the models always know one). ``dtype``: fp32 (default) or fp64.
        """
        device = positions.device
        if max_position is None:
            max_position = int(positions.max().item()) if positions.numel() else 0
        needed = max_position + 1
        if (self.cos.numel() == 0 or self.cos.device != device or self.cos.is_meta
                or self.cos.shape[0] < needed or self.cos.dtype != dtype):
            length = self.max_len
            while length < needed:
                length *= 2
            self._build(length, device, dtype)
        cos = self.cos[positions].unsqueeze(1)
        sin = self.sin[positions].unsqueeze(1)
        return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, H, T, D) with tables (B, 1, T, D/2); computes in the wider of the two
    dtypes (at least fp32), returns x.dtype."""
    half = x.shape[-1] // 2
    xf = x.to(torch.promote_types(x.dtype, cos.dtype))
    x1, x2 = xf[..., :half], xf[..., half:]
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.to(x.dtype)
