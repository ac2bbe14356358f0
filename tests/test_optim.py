"""Schedules, parameter groups and the unfactored Adafactor."""
from __future__ import annotations

import math

import pytest
import torch

from lightning_redllm.modules.adafactor import Adafactor
from lightning_redllm.modules.optim import build_optimizer, lr_multiplier, param_groups


def test_cosine_schedule_shape():
    f = lr_multiplier("cosine", warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55)
    assert f(110) == pytest.approx(0.1) and f(10_000) == pytest.approx(0.1)
    assert all(f(i) >= f(i + 1) for i in range(10, 200))


def test_constant_and_inverse_sqrt():
    c = lr_multiplier("constant", warmup_steps=0, total_steps=0, min_lr_ratio=0.0)
    assert c(0) == c(10**6) == 1.0
    r = lr_multiplier("inverse_sqrt", warmup_steps=100, total_steps=0, min_lr_ratio=0.0)
    assert r(99) == pytest.approx(1.0) and r(399) == pytest.approx(0.5)


def test_schedule_errors():
    with pytest.raises(ValueError, match="linear"):
        lr_multiplier("linear", warmup_steps=1, total_steps=2, min_lr_ratio=0.1)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        lr_multiplier("cosine", warmup_steps=1, total_steps=2, min_lr_ratio=2.0)
    with pytest.raises(ValueError, match="sgd"):
        build_optimizer("sgd", [{"params": [torch.nn.Parameter(torch.zeros(1))]}], lr=0.1)


def test_weight_decay_only_on_matrices():
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    groups = param_groups(m, 0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert decayed == {id(m[0].weight)}


def test_adafactor_matches_hand_computation():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 3))
    ref = p.detach().clone().double()
    v = torch.zeros_like(ref)
    opt = Adafactor([p], lr=0.01, decay_rate=0.8)
    for t in range(1, 4):
        g = torch.randn(4, 3)
        p.grad = g.clone()
        opt.step()
        g = g.double()
        beta2 = 1 - t ** -0.8
        v = beta2 * v + (1 - beta2) * (g * g + 1e-30)
        u = g / v.sqrt()
        u = u / max(1.0, u.pow(2).mean().sqrt().item())
        ref = ref - 0.01 * max(1e-3, ref.pow(2).mean().sqrt().item()) * u
    torch.testing.assert_close(p.detach().double(), ref, atol=1e-6, rtol=1e-5)
    assert opt.state[p]["exp_avg_sq"].shape == (4, 3)  # full, not factored


@pytest.mark.parametrize("name", ["adamw", "adafactor", "torch_adafactor"])
def test_optimizers_minimize(name):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 8))
    target = torch.randn(8, 8)
    opt = build_optimizer(name, [{"params": [w], "weight_decay": 0.0}], lr=0.05)
    start = (w - target).pow(2).mean().item()
    for _ in range(200):
        opt.zero_grad()
        loss = (w - target).pow(2).mean()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * start and math.isfinite(loss.item())
