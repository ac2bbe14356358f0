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


@pytest.mark.numerics
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adafactor_matches_transformers_unfactored(weight_decay):
    """Outside reference: ``transformers.Adafactor`` with a fixed LR, parameter scaling, no first
    moment, decay exponent 0.8. It leaves 1-D tensors unfactored, and every operation of the
    unfactored rule is elementwise or an RMS over the whole tensor, so our (5, 4) matrix must follow
    exactly the path of its flattened (20,) copy there."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    ours = torch.nn.Parameter(torch.randn(5, 4, dtype=torch.float64))
    ref = torch.nn.Parameter(ours.detach().clone().reshape(20))
    opt = Adafactor([ours], lr=0.01, decay_rate=0.8, weight_decay=weight_decay)
    ref_opt = transformers.Adafactor([ref], lr=0.01, decay_rate=-0.8, eps=(1e-30, 1e-3), clip_threshold=1.0,
                                     beta1=None, weight_decay=weight_decay, scale_parameter=True,
                                     relative_step=False, warmup_init=False)
    clipped = False
    for step in range(1, 7):
        g = torch.randn(5, 4, dtype=torch.float64) * (30.0 if step == 4 else 1.0)  # a spike: the RMS clip acts
        ours.grad, ref.grad = g.clone(), g.reshape(20).clone()
        before = ours.detach().clone()
        opt.step()
        ref_opt.step()
        # fp64 on both sides with the same operations in a different order: ~1e-16 relative per step
        torch.testing.assert_close(ours.detach().reshape(20), ref.detach(), atol=1e-13, rtol=1e-12)
        v = opt.state[ours]["exp_avg_sq"]
        u = g / v.sqrt()
        clipped |= bool(u.pow(2).mean().sqrt() > 1.0)
        assert not torch.equal(before, ours.detach())
    assert clipped, "the spike should have exercised update clipping"
    assert opt.state[ours]["exp_avg_sq"].shape == (5, 4)  # full second moment, not factored


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
