"""Fused output projection + cross-entropy (+ z-loss), chunked over tokens.

The naive path materializes fp32 logits for every token of the batch and keeps them (and the
softmax) alive for backward. At the 1B preset (vocab 32,768) that is 2048 x 32768 x 4 B = 256 MiB
of fp32 logits per 2048-token sequence, about 0.6-0.75 GiB per sequence once the softmax/grad
copies are counted, i.e. ~5-6 GiB for a micro-batch of 8. Here the logits of ``chunk`` tokens
at a time are formed, reduced to loss terms, and turned into gradients right away (the gradient
of this loss w.r.t. the logits is closed-form), so the peak is ~2 x chunk x V x 4 B — 1 GiB for
the default 4096-token chunk, independent of batch size — and nothing of size N x V is kept for
backward: only dL/dhidden (N x C) and dL/dW (V x C).

When autograd is off (``torch.no_grad()``: validation, scoring, ``evaluate``) or no input needs a
gradient, only the forward reduction runs: no gradient buffers, one matmul per chunk instead of three.

Precision: logits, log-sum-exp and the loss sums are computed in ``compute_dtype`` of the input
(fp32 for bf16/fp16/fp32 inputs, fp64 for fp64 inputs); the matmul itself runs in the input dtype
(bf16 under autocast).

Per counted token (label != ignore):  ``(logsumexp(z) - z_y)  +  z_loss * logsumexp(z)^2``;
``reduction="mean"`` divides the sum by the counted tokens, ``"sum"`` does not (used to normalize
over a whole optimizer step, see ``LanguageModelModule``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .norm import compute_dtype

IGNORE_INDEX = -100


@dataclass
class LossOutput:
    loss: torch.Tensor        # scalar, differentiable: nll + z_loss * z, as mean or sum (``reduction``)
    nll: torch.Tensor         # scalar, mean cross-entropy over counted tokens
    z: torch.Tensor           # scalar, mean logsumexp^2 over counted tokens
    correct: torch.Tensor     # scalar int, argmax == label over counted tokens
    num_tokens: torch.Tensor  # scalar int, tokens counted (labels != ignore)


def _chunked_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, z_loss: float, chunk: int,
                  ignore_index: int, mean: bool, need_grad: bool):
    """Loss terms and (if ``need_grad``) the gradients w.r.t. hidden (N, C) and weight (V, C)."""
    n = hidden.shape[0]
    acc = compute_dtype(hidden.dtype)
    valid_all = labels != ignore_index
    count = valid_all.sum()
    denom = count.clamp(min=1).to(acc) if mean else torch.ones((), dtype=acc, device=hidden.device)
    nll_sum = torch.zeros((), dtype=acc, device=hidden.device)
    z_sum = torch.zeros_like(nll_sum)
    correct = torch.zeros((), dtype=torch.long, device=hidden.device)
    grad_h = torch.empty_like(hidden) if need_grad else None
    grad_w = torch.zeros(weight.shape, dtype=compute_dtype(weight.dtype), device=weight.device) if need_grad else None
    for start in range(0, n, chunk):
        h = hidden[start:start + chunk]                      # (n, C)
        y = labels[start:start + chunk]                      # (n,)
        valid = valid_all[start:start + chunk]
        y_safe = torch.where(valid, y, torch.zeros_like(y))
        logits = (h @ weight.t()).to(acc)                    # (n, V)
        lse = torch.logsumexp(logits, dim=-1)                # (n,)
        target = logits.gather(1, y_safe.unsqueeze(1)).squeeze(1)
        vf = valid.to(acc)
        nll_sum = nll_sum + ((lse - target) * vf).sum()
        z_sum = z_sum + (lse.square() * vf).sum()
        correct = correct + ((logits.argmax(dim=-1) == y) & valid).sum()
        if need_grad:
            # d/dlogits [lse - z_y + a*lse^2] = (softmax * (1 + 2a*lse) - onehot(y)) * valid / denom,
            # formed in place of the logits (no longer needed): two passes over (n, V) after the exp
            probs = logits.sub_(lse.unsqueeze(1)).exp_()     # (n, V)
            row = vf / denom                                 # (n,)
            probs.mul_(((1.0 + 2.0 * z_loss * lse) * row).unsqueeze(1))
            probs.scatter_add_(1, y_safe.unsqueeze(1), -row.unsqueeze(1))
            g = probs.to(hidden.dtype)
            grad_h[start:start + chunk] = g @ weight
            grad_w.add_(g.t() @ h)
    mean_denom = count.clamp(min=1).to(acc)
    nll, z = nll_sum / mean_denom, z_sum / mean_denom
    loss = (nll_sum + z_loss * z_sum) / denom
    return loss, nll, z, correct, count, grad_h, grad_w


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, z_loss, chunk, ignore_index, mean):
        loss, nll, z, correct, count, grad_h, grad_w = _chunked_loss(
            hidden, weight, labels, z_loss, chunk, ignore_index, mean, need_grad=True)
        ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        ctx.mark_non_differentiable(nll, z, correct, count)
        return loss, nll, z, correct, count

    @staticmethod
    def backward(ctx, grad_loss, *_):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_loss.to(grad_h.dtype) if ctx.needs_input_grad[0] else None
        gw = grad_w * grad_loss.to(grad_w.dtype) if ctx.needs_input_grad[1] else None
        return gh, gw, None, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                         z_loss: float = 0.0, chunk: int = 4096, ignore_index: int = IGNORE_INDEX,
                         reduction: Literal["mean", "sum"] = "mean") -> LossOutput:
    """Loss of ``hidden @ weight.T`` against ``labels`` without keeping N x V logits.

    hidden: (..., C); weight: (V, C); labels: (...) with ``ignore_index`` for skipped positions.
    """
    h = hidden.reshape(-1, hidden.shape[-1])
    y = labels.reshape(-1)
    if h.shape[0] != y.shape[0]:
        raise ValueError(f"hidden has {h.shape[0]} positions but labels has {y.shape[0]}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    mean = reduction == "mean"
    # autograd.Function.forward always runs with grad mode off, so decide here
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad):
        loss, nll, z, correct, count = _ChunkedLinearCrossEntropy.apply(
            h, weight, y, float(z_loss), int(chunk), int(ignore_index), mean)
    else:
        loss, nll, z, correct, count, _, _ = _chunked_loss(h, weight, y, float(z_loss), int(chunk),
                                                           int(ignore_index), mean, need_grad=False)
    return LossOutput(loss=loss, nll=nll, z=z, correct=correct, num_tokens=count)


def reference_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, *, z_loss: float = 0.0,
                            ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The naive loss over materialized logits: the baseline ``benchmarks/`` compares the fused
    loss against (the tests use their own, independent fp64 reference)."""
    logits = logits.to(compute_dtype(logits.dtype)).reshape(-1, logits.shape[-1])
    y = labels.reshape(-1)
    valid = y != ignore_index
    lse = torch.logsumexp(logits, dim=-1)
    nll = torch.nn.functional.cross_entropy(logits, y, ignore_index=ignore_index, reduction="sum")
    denom = valid.sum().clamp(min=1)
    return (nll + z_loss * (lse.square() * valid).sum()) / denom


__all__ = ["IGNORE_INDEX", "LossOutput", "linear_cross_entropy", "reference_cross_entropy"]
