"""Adafactor *without* factorization, as the study ran it (T5X defaults, decay rate 0.8).

``torch.optim.Adafactor`` always factors the second moment of matrices; the study kept the full
second moment (more memory, same rule otherwise). Per parameter, at step t (1-based)::

    beta2_t = 1 - t^(-decay_rate)
    v      = beta2_t * v + (1 - beta2_t) * (g^2 + eps1)
    u      = g / sqrt(v);   u /= max(1, RMS(u) / clip_threshold)
    step   = lr * max(eps2, RMS(p))   if scale_by_param_rms else lr
    p     -= step * (u + weight_decay * p)

No first moment (beta1 = None in the study).
"""
from __future__ import annotations

from typing import Iterable

import torch


class Adafactor(torch.optim.Optimizer):
    """Unfactored Adafactor.

    Args:
        params: parameters or param groups.
        lr: relative (with ``scale_by_param_rms``) or absolute step size.
        decay_rate: exponent of the second-moment decay ``1 - t^-decay_rate`` (study: 0.8).
        eps1: added to the squared gradient.
        eps2: floor of the parameter RMS used for scaling.
        clip_threshold: update RMS clipping threshold.
        scale_by_param_rms: multiply the step by the parameter RMS (T5X ``multiply_by_parameter_scale``).
        weight_decay: decoupled weight decay, scaled by the step size.
    """

    def __init__(self, params: Iterable, lr: float = 1e-2, *, decay_rate: float = 0.8, eps1: float = 1e-30,
                 eps2: float = 1e-3, clip_threshold: float = 1.0, scale_by_param_rms: bool = True,
                 weight_decay: float = 0.0) -> None:
        if lr <= 0 or decay_rate <= 0 or clip_threshold <= 0:
            raise ValueError(f"Adafactor needs lr, decay_rate and clip_threshold > 0 (got {lr}, {decay_rate}, {clip_threshold})")
        defaults = dict(lr=lr, decay_rate=decay_rate, eps1=eps1, eps2=eps2, clip_threshold=clip_threshold,
                        scale_by_param_rms=scale_by_param_rms, weight_decay=weight_decay)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                acc = torch.promote_types(p.dtype, torch.float32)  # bf16 params update in fp32, fp64 in fp64
                g = p.grad.to(acc)
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=acc, memory_format=torch.preserve_format)
                state["step"] += 1
                t = float(state["step"])
                beta2 = 1.0 - t ** (-group["decay_rate"])
                v = state["exp_avg_sq"]
                v.mul_(beta2).add_(g.square() + group["eps1"], alpha=1.0 - beta2)
                u = g / v.sqrt()
                rms_u = u.square().mean().sqrt()
                u.div_(torch.clamp(rms_u / group["clip_threshold"], min=1.0))
                pf = p.to(acc)
                step = group["lr"]
                if group["scale_by_param_rms"]:
                    step = step * torch.clamp(pf.square().mean().sqrt(), min=group["eps2"])
                if group["weight_decay"]:
                    u.add_(pf, alpha=group["weight_decay"])
                p.copy_((pf - step * u).to(p.dtype))
        return loss
