"""Optimizers, parameter groups and learning-rate schedules as small pure functions.

Schedules are multipliers of the peak LR as a function of the optimizer step, used through
``torch.optim.lr_scheduler.LambdaLR`` (stepped every optimizer step):

* ``cosine``: linear warmup to 1, cosine decay to ``min_lr_ratio`` at ``total_steps``, then flat
  (study pretraining: 2K warmup, 0.1x floor).
* ``constant``: linear warmup then 1 (study instruction tuning: constant 1e-3).
* ``inverse_sqrt``: linear warmup then ``sqrt(warmup / step)`` (T5 style), floored at ``min_lr_ratio``.
"""
from __future__ import annotations

import functools
import math
from typing import Iterable, Optional

import torch
from torch import nn

SCHEDULES = ("cosine", "constant", "inverse_sqrt")
OPTIMIZERS = ("adamw", "adafactor", "torch_adafactor")


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_constant(step: int, *, warmup_steps: int, **_: object) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    return 1.0


def warmup_inverse_sqrt(step: int, *, warmup_steps: int, min_lr_ratio: float = 0.0, **_: object) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(min_lr_ratio, math.sqrt(max(1, warmup_steps) / max(1, step + 1)))


def lr_multiplier(name: str, *, warmup_steps: int, total_steps: int, min_lr_ratio: float):
    """The schedule ``name`` as a picklable ``step -> multiplier`` function."""
    fns = {"cosine": warmup_cosine, "constant": warmup_constant, "inverse_sqrt": warmup_inverse_sqrt}
    if name not in fns:
        raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    return functools.partial(fns[name], warmup_steps=warmup_steps, total_steps=total_steps, min_lr_ratio=min_lr_ratio)


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, factor):
        ctx.save_for_backward(factor)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        (factor,) = ctx.saved_tensors
        return grad * factor.to(grad.dtype), None


def scale_grad(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``x`` unchanged in the forward pass; its gradient multiplied by ``factor`` in backward.

    Turns a micro-batch *mean* loss into one whose gradient is that of the *sum* (factor = the
    micro-batch's token count) while the value callbacks and the progress bar see stays the mean.
    """
    return _ScaleGrad.apply(x, factor.detach())


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (projections and the tied embedding); none on norm scales."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        # a ZeRO-3-partitioned parameter is a flat (or empty) local shard: its real shape is ds_shape
        shape = getattr(p, "ds_shape", p.shape)
        (decay if len(shape) >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(name: str, groups: Iterable[dict], *, lr: float, betas: tuple[float, float] = (0.9, 0.95),
                    eps: float = 1e-8, adafactor_decay: float = 0.8, fused: Optional[bool] = None) -> torch.optim.Optimizer:
    """``adamw`` (fused kernels on CUDA), ``adafactor`` (unfactored, the study's) or
    ``torch_adafactor`` (``torch.optim.Adafactor``, factored second moments: less memory).

    Both Adafactors scale the step by the parameter RMS, which is why the study's peak LR (0.01)
    is far above AdamW's usual 3e-4.
    """
    groups = list(groups)
    if name == "adamw":
        if fused is None:
            fused = all(p.is_cuda for g in groups for p in g["params"]) and torch.cuda.is_available()
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=bool(fused))
    if name == "adafactor":
        from .adafactor import Adafactor

        return Adafactor(groups, lr=lr, decay_rate=adafactor_decay)
    if name == "torch_adafactor":
        return torch.optim.Adafactor(groups, lr=lr, beta2_decay=-adafactor_decay, eps=(None, 1e-3))
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
