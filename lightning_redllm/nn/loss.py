"""Fused output projection + cross-entropy (+ z-loss), chunked over tokens.

The naive path materializes fp32 logits for every token of the batch and keeps them (and the
softmax) alive for backward. At the 1B preset (vocab 32,768) that is 2048 x 32768 x 4 B = 256 MiB
of fp32 logits per 2048-token sequence, about 0.6-0.75 GiB per sequence once the softmax/grad
copies are counted, i.e. ~5-6 GiB for a micro-batch of 8. Here the logits of ``chunk`` tokens
at a time are formed, reduced to loss terms, and turned into gradients right away (the gradient
of this loss w.r.t. the logits is closed-form), so the peak is ~2 x chunk x V x 4 B — 1 GiB for
the default 4096-token chunk, independent of batch size — and nothing of size N x V is kept for
backward: only dL/dhidden (N x C) and dL/dW (V x C).

Loss = mean over non-ignored tokens of  (logsumexp(z) - z_y)  +  z_loss * logsumexp(z)^2.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass
class LossOutput:
    loss: torch.Tensor        # scalar, differentiable: nll + z_loss * z
    nll: torch.Tensor         # scalar, mean cross-entropy over counted tokens
    z: torch.Tensor           # scalar, mean logsumexp^2 over counted tokens
    correct: torch.Tensor     # scalar int, argmax == label over counted tokens
    num_tokens: torch.Tensor  # scalar int, tokens counted (labels != ignore)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, z_loss, chunk, ignore_index):
        # hidden (N, C), weight (V, C), labels (N,)
        n = hidden.shape[0]
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        valid_all = labels != ignore_index
        count = valid_all.sum()
        denom = count.clamp(min=1).to(torch.float32)
        nll_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        z_sum = torch.zeros_like(nll_sum)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_grad else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_grad else None
        for start in range(0, n, chunk):
            h = hidden[start:start + chunk]                      # (n, C)
            y = labels[start:start + chunk]                      # (n,)
            valid = valid_all[start:start + chunk]
            y_safe = torch.where(valid, y, torch.zeros_like(y))
            logits = (h @ weight.t()).float()                    # (n, V)
            lse = torch.logsumexp(logits, dim=-1)                # (n,)
            target = logits.gather(1, y_safe.unsqueeze(1)).squeeze(1)
            vf = valid.float()
            nll_sum = nll_sum + ((lse - target) * vf).sum()
            z_sum = z_sum + (lse.square() * vf).sum()
            correct = correct + ((logits.argmax(dim=-1) == y) & valid).sum()
            if need_grad:
                # d/dlogits [lse - z_y + a*lse^2] = softmax * (1 + 2a*lse) - onehot(y)
                probs = torch.exp(logits - lse.unsqueeze(1))     # (n, V), reuses no extra N x V memory
                probs.mul_((1.0 + 2.0 * z_loss * lse).unsqueeze(1))
                probs.scatter_add_(1, y_safe.unsqueeze(1), -torch.ones_like(lse).unsqueeze(1))
                probs.mul_((vf / denom).unsqueeze(1))
                g = probs.to(hidden.dtype)
                grad_h[start:start + chunk] = g @ weight
                grad_w.add_(g.t() @ h)
        nll = nll_sum / denom
        z = z_sum / denom
        loss = nll + z_loss * z
        if need_grad:
            ctx.save_for_backward(grad_h, grad_w.to(weight.dtype))
        ctx.need_grad = need_grad
        ctx.mark_non_differentiable(nll, z, correct, count)
        return loss, nll, z, correct, count

    @staticmethod
    def backward(ctx, grad_loss, *_):
        if not ctx.need_grad:
            return None, None, None, None, None, None
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_loss.to(grad_h.dtype) if ctx.needs_input_grad[0] else None
        gw = grad_w * grad_loss.to(grad_w.dtype) if ctx.needs_input_grad[1] else None
        return gh, gw, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, *,
                         z_loss: float = 0.0, chunk: int = 4096,
                         ignore_index: int = IGNORE_INDEX) -> LossOutput:
    """Loss of ``hidden @ weight.T`` against ``labels`` without keeping N x V logits.

    hidden: (..., C); weight: (V, C); labels: (...) with ``ignore_index`` for skipped positions.
    """
    h = hidden.reshape(-1, hidden.shape[-1])
    y = labels.reshape(-1)
    if h.shape[0] != y.shape[0]:
        raise ValueError(f"hidden has {h.shape[0]} positions but labels has {y.shape[0]}")
    loss, nll, z, correct, count = _ChunkedLinearCrossEntropy.apply(
        h, weight, y, float(z_loss), int(chunk), int(ignore_index))
    return LossOutput(loss=loss, nll=nll, z=z, correct=correct, num_tokens=count)


def reference_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, *, z_loss: float = 0.0,
                            ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The naive loss (full fp32 logits), kept as the test reference."""
    logits = logits.float().reshape(-1, logits.shape[-1])
    y = labels.reshape(-1)
    valid = y != ignore_index
    lse = torch.logsumexp(logits, dim=-1)
    nll = torch.nn.functional.cross_entropy(logits, y, ignore_index=ignore_index, reduction="sum")
    denom = valid.sum().clamp(min=1)
    return (nll + z_loss * (lse.square() * valid).sum()) / denom
