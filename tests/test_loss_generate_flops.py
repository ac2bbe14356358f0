"""Fused chunked loss vs the naive reference, cached vs uncached generation, FLOPs accounting."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lightning_redllm.config import ModelConfig, forward_flops_per_sequence, training_flops_per_sequence
from lightning_redllm.generate import SamplingOptions, generate, sample_next
from lightning_redllm.models import build_model
from lightning_redllm.nn import linear_cross_entropy

pytestmark = pytest.mark.numerics


def _reference_loss(h, w, y, z_loss):
    """Independent reference: plain fp64 autograd over the materialized logits."""
    logits = h.double() @ w.double().t()
    valid = y != -100
    lse = torch.logsumexp(logits, dim=-1)
    target = logits.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    per_token = (lse - target) + z_loss * lse.square()
    return (per_token * valid).sum() / valid.sum()


def _inputs(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(2, 11, 16, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    w = torch.randn(50, 16, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    y = torch.randint(0, 50, (2, 11), generator=g)
    y[0, :4] = -100
    return h, w, y


# Tolerances follow the compute dtype of the fused loss (its logits/lse/sums run in max(fp32, input)):
#   fp64: eps 2.2e-16; sums of ~20 tokens x 50 classes stay below 1e-13 relative  -> 1e-12
#   fp32: eps 1.2e-7; logsumexp over 50 classes and a 16-long dot product, a few hundred ulps -> 2e-5
#   bf16: inputs and matmul in bf16 (eps 7.8e-3), the rest fp32; the reference sees the same
#         bf16-rounded inputs in fp64, so only the bf16 matmul rounding remains -> 2e-2
TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
@pytest.mark.parametrize("chunk", [3, 64])
def test_chunked_linear_cross_entropy_matches_fp64_reference(z_loss, chunk, dtype):
    h, w, y = _inputs(dtype)
    out = linear_cross_entropy(h, w, y, z_loss=z_loss, chunk=chunk)
    (out.loss * 3.0).backward()
    hr = h.detach().double().requires_grad_()
    wr = w.detach().double().requires_grad_()
    ref = _reference_loss(hr, wr, y, z_loss)
    (ref * 3.0).backward()
    tol = TOL[dtype]
    torch.testing.assert_close(out.loss.double(), ref.detach(), atol=tol, rtol=tol)
    torch.testing.assert_close(h.grad.double(), hr.grad, atol=tol, rtol=tol)
    torch.testing.assert_close(w.grad.double(), wr.grad, atol=tol, rtol=tol)
    assert out.num_tokens.item() == 18
    if dtype == torch.float64:
        logits = hr @ wr.t()
        assert out.correct.item() == ((logits.argmax(-1) == y) & (y != -100)).sum().item()


def test_sum_reduction_is_the_mean_times_the_tokens():
    h, w, y = _inputs(torch.float64)
    mean = linear_cross_entropy(h, w, y, z_loss=1e-2)
    total = linear_cross_entropy(h, w, y, z_loss=1e-2, reduction="sum")
    torch.testing.assert_close(total.loss, mean.loss * 18, atol=1e-12, rtol=1e-12)  # fp64
    gh = torch.autograd.grad(total.loss, h)[0]
    ref = torch.autograd.grad(_reference_loss(h, w, y, 1e-2) * 18, h)[0]
    torch.testing.assert_close(gh, ref, atol=1e-12, rtol=1e-12)
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(h, w, y, reduction="none")


def test_no_gradient_work_when_autograd_is_off():
    """Under no_grad (validation, scoring, evaluate) the loss is one matmul per chunk: no gradient
    buffers, none of the two backward matmuls, nothing saved for backward."""
    h, w, y = _inputs(torch.float32)
    n, c, v = 22, 16, 50
    logits_flops = 2 * n * c * v

    def flops(fn):
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    with torch.no_grad():
        assert flops(lambda: linear_cross_entropy(h, w, y, chunk=4)) == logits_flops
    # inputs that need no gradient, grad mode on: the same
    assert flops(lambda: linear_cross_entropy(h.detach(), w.detach(), y, chunk=4)) == logits_flops
    # training: logits + dL/dh + dL/dW computed in the forward pass
    out = None

    def train():
        nonlocal out
        out = linear_cross_entropy(h, w, y, chunk=4)

    assert flops(train) == 3 * logits_flops
    assert out.loss.requires_grad
    with torch.no_grad():
        assert not linear_cross_entropy(h, w, y).loss.requires_grad


def test_loss_all_ignored_is_zero_not_nan():
    h = torch.randn(4, 8, requires_grad=True)
    w = torch.randn(10, 8, requires_grad=True)
    out = linear_cross_entropy(h, w, torch.full((4,), -100))
    out.loss.backward()
    assert out.loss.item() == 0.0 and torch.all(h.grad == 0)


def _model(family, **kw):
    torch.manual_seed(1)
    cfg = dict(vocab_size=61, d_model=32, n_heads=4, head_dim=8, ffn_dim=64, n_layers=2,
               n_encoder_layers=2, n_decoder_layers=2, max_seq_len=8)
    cfg.update(kw)
    m = build_model(ModelConfig(family=family, **cfg))
    m.init_weights()
    return m


@pytest.mark.parametrize("family", ["decllm", "redllm"])
def test_cached_equals_uncached_generation_ragged_batch(family):
    m = _model(family, n_kv_heads=2)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12], [13, 14, 15]]
    greedy = SamplingOptions(max_new_tokens=12)
    a = generate(m, prompts, bos_id=1, eos_id=None, options=greedy, use_cache=True)
    b = generate(m, prompts, bos_id=1, eos_id=None, options=greedy, use_cache=False)
    assert a == b and all(len(x) == 12 for x in a)
    # each row equals generating that prompt alone (padding is invisible)
    for p, row in zip(prompts, a):
        assert generate(m, [p], bos_id=1, eos_id=None, options=greedy)[0] == row
    sampled = SamplingOptions(max_new_tokens=10, temperature=0.9, top_k=20, top_p=0.9, seed=3)
    c = generate(m, prompts, bos_id=1, eos_id=None, options=sampled, use_cache=True)
    d = generate(m, prompts, bos_id=1, eos_id=None, options=sampled, use_cache=False)
    assert c == d


@pytest.mark.parametrize("family", ["decllm", "redllm"])
def test_eos_stops_generation(family):
    m = _model(family)
    prompts = [[5, 6, 7], [8, 9]]
    free = generate(m, prompts, bos_id=1, eos_id=None, options=SamplingOptions(max_new_tokens=8))
    eos = free[0][2]  # make the third greedy token of row 0 the eos
    stopped = generate(m, prompts, bos_id=1, eos_id=eos, options=SamplingOptions(max_new_tokens=8))
    cut = free[0].index(eos)
    assert stopped[0] == free[0][:cut]
    assert len(stopped[1]) <= 8


def test_sampling_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).repeat(2000, 1)
    top1 = sample_next(logits, SamplingOptions(temperature=1.0, top_k=1))
    assert (top1 == 3).all()
    top2 = sample_next(logits, SamplingOptions(temperature=1.0, top_k=2))
    assert set(top2.tolist()) == {2, 3}
    p = torch.softmax(logits[0], 0)  # [0.032, 0.087, 0.237, 0.644]
    nucleus = sample_next(logits, SamplingOptions(temperature=1.0, top_p=0.8))
    assert set(nucleus.tolist()) == {2, 3} and p[3] < 0.8


@pytest.mark.parametrize("bad", [dict(top_p=0.0), dict(top_p=1.5), dict(temperature=-1.0),
                                 dict(top_k=0), dict(max_new_tokens=0)])
def test_invalid_sampling_options(bad):
    with pytest.raises(ValueError):
        SamplingOptions(**bad)


def test_empty_prompt_rejected():
    m = _model("decllm")
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(m, [[3], []], bos_id=1, eos_id=2)
    with pytest.raises(ValueError, match="at least one prompt"):
        generate(m, [], bos_id=1, eos_id=2)


def _counted_flops(fn) -> int:
    # the CPU fused SDPA kernel is not registered with the flop counter; the math backend's
    # matmuls are, so count through it (CUDA flash/efficient kernels are registered as well)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("family", ["decllm", "redllm"])
def test_flops_function_matches_flop_counter(family):
    cfg = ModelConfig(family=family, vocab_size=512, d_model=128, n_heads=4, head_dim=32, ffn_dim=384,
                      n_layers=4, n_encoder_layers=2, n_decoder_layers=2, loss_chunk_tokens=10**6)
    m = build_model(cfg)
    m.init_weights()
    seq, prefix = 128, 48
    tokens = torch.randint(0, 512, (2, seq))
    if family == "decllm":
        fwd = lambda: m(tokens, return_logits=True)  # noqa: E731
        train = lambda: m(tokens, labels=tokens).loss.backward()  # noqa: E731
    else:
        fwd = lambda: m(tokens[:, :prefix], tokens[:, prefix:], return_logits=True)  # noqa: E731
        train = lambda: m(tokens[:, :prefix], tokens[:, prefix:], labels=tokens[:, prefix:]).loss.backward()  # noqa: E731
    expected_fwd = 2 * forward_flops_per_sequence(cfg, seq, prefix)
    got_fwd = _counted_flops(fwd)
    assert abs(got_fwd - expected_fwd) / expected_fwd < 0.05, (got_fwd, expected_fwd)
    expected_train = 2 * training_flops_per_sequence(cfg, seq, prefix)
    got_train = _counted_flops(train)
    assert abs(got_train - expected_train) / expected_train < 0.05, (got_train, expected_train)


def test_redllm_half_the_flops_of_decllm_at_1b():
    dec = training_flops_per_sequence(ModelConfig.from_name("decllm-1b"), 2048)
    red = training_flops_per_sequence(ModelConfig.from_name("redllm-1b"), 2048, 1024)
    assert 0.4 < red / dec < 0.6
