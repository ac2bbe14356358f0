"""RMSNorm: the learned pre-norm and the parameter-free variant used on Q, K, V (and attention outputs).

Both compute in at least fp32 (``compute_dtype``) and cast back to the input dtype, so bf16
training normalizes accurately and an fp64 model (the tests' reference comparisons) stays fp64.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision numerically sensitive ops run in: fp32 for bf16/fp16/fp32, fp64 for fp64."""
    return torch.promote_types(dtype, torch.float32)


def rms_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Parameter-free RMSNorm over the last dimension (>= fp32 compute, input dtype out)."""
    return F.rms_norm(x.to(compute_dtype(x.dtype)), (x.shape[-1],), eps=eps).to(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm with a learned per-channel scale (initialized to 1)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(x.dtype)
        normed = F.rms_norm(x.to(dtype), (x.shape[-1],), eps=self.eps)
        return (normed * self.weight.to(dtype)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
