"""Static KV cache + compiled one-token decoding step (``generate(..., compile=True)``).

The compiled path must give exactly the tokens of the eager cached path and of the uncached path
(which re-runs the whole sequence every step), on ragged batches (DecLLM left padding + attention
mask, RedLLM right-padded encoder + lengths), greedy and seeded sampling, for DecLLM with a
bidirectional prompt too; and its step must really be static: one compiled graph for all steps.

Shape buckets (``static_buckets``): a sweep of ragged calls compiles one graph per bucket, not per
shape, with the eager tokens; the graph counter is shown to see per-shape compiles; more buckets than
dynamo's recompile limit raise the limit, and a limit hit is an error.

Cost: inductor compiles two graphs per family (batch buckets 4 and 8 at the 64 length floor; the
first test's bucket is reused by the sweep when both run); the counter and limit tests trace with
``backend="eager"`` (seconds per graph).
"""
from __future__ import annotations

import types
import warnings

import pytest
import torch

import lightning_redllm.generate.static as G
from lightning_redllm.config import ModelConfig
from lightning_redllm.generate import DONE_CHECK_EVERY, SamplingOptions, generate, static_buckets
from lightning_redllm.models import build_model
from lightning_redllm.nn import KVCache

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12], [13, 14, 15]]
NEW = 12


def _model(family):
    torch.manual_seed(1)
    cfg = ModelConfig(family=family, vocab_size=61, d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, ffn_dim=64,
                      n_layers=2, n_encoder_layers=2, n_decoder_layers=2, max_seq_len=64)
    m = build_model(cfg)
    m.init_weights()
    return m


def _gen(m, opts, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return generate(m, PROMPTS, bos_id=1, eos_id=kw.pop("eos_id", None), options=opts, **kw)


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def test_static_cache_write_reads_every_slot():
    c = KVCache(2, 1, 4, max_len=6, dtype=torch.float32, device=torch.device("cpu"))
    k, v = torch.randn(2, 1, 1, 4), torch.randn(2, 1, 1, 4)
    kk, vv = c.write(k, v, torch.tensor([3]))
    assert kk.shape == (2, 1, 6, 4) and c.length == 0  # all slots come back; the host count is untouched
    torch.testing.assert_close(kk[:, :, 3:4], k, rtol=0, atol=0)
    assert (kk[:, :, :3] == 0).all() and (kk[:, :, 4:] == 0).all()


@pytest.mark.parametrize("family", ["decllm", "redllm"])
def test_compiled_static_decode_matches_eager_cached_and_uncached(family):
    m = _model(family)
    greedy = SamplingOptions(max_new_tokens=NEW)
    before = _graphs()
    compiled = _gen(m, greedy, compile=True)
    assert _graphs() - before == 1, "the decoding step must be one graph for every step (static shapes)"
    assert compiled == _gen(m, greedy, use_cache=True) == _gen(m, greedy, use_cache=False)
    assert all(len(row) == NEW for row in compiled)

    sampled = SamplingOptions(max_new_tokens=NEW, temperature=0.9, top_k=20, top_p=0.9, seed=3)
    s = _gen(m, sampled, compile=True)
    assert s == _gen(m, sampled, use_cache=True) == _gen(m, sampled, use_cache=False)
    assert s != compiled  # the sampling path really sampled

    # an eos that ends row 0 early: the compiled path checks "all done" only every few steps, the
    # tokens after each row's eos are cut the same way
    eos = compiled[0][2]
    assert _gen(m, greedy, compile=True, eos_id=eos) == _gen(m, greedy, eos_id=eos)
    assert DONE_CHECK_EVERY < NEW

    if family == "decllm":  # "DecLLM + BiAttn": the prompt is attended bidirectionally in the prefill
        m.config.bidirectional_prefix = True
        bi = _gen(m, greedy, compile=True)
        assert bi == _gen(m, greedy, use_cache=True) == _gen(m, greedy, use_cache=False)
        assert bi != compiled
    assert _graphs() - before == 1  # same model, batch and cache length: no recompilation


def test_compile_needs_the_cache():
    with pytest.raises(ValueError, match="use_cache=False"):
        _gen(_model("decllm"), SamplingOptions(max_new_tokens=2), compile=True, use_cache=False)


# ------------------------------------------------------------------ bounded compilation (shape buckets)

def _sweep(seed: int = 0, calls: int = 20) -> list[tuple[list[list[int]], int]]:
    """Ragged requests as an lm-eval loop meets them: batch 3..8, prompts of 1..40 tokens,
    3..6 new tokens. Batch buckets 4 and 8 both occur (a fixed draw)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(calls):
        b = 3 + i % 6 if i < 6 else int(torch.randint(3, 9, (1,), generator=g))
        lens = torch.randint(1, 41, (b,), generator=g).tolist()
        prompts = [torch.randint(2, 61, (n,), generator=g).tolist() for n in lens]
        out.append((prompts, 3 + i % 4))
    return out


def _call(m, prompts, new, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return generate(m, prompts, bos_id=1, eos_id=None, options=SamplingOptions(max_new_tokens=new), **kw)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["decllm", "redllm"])
def test_ragged_sweep_compiles_one_graph_per_bucket(family):
    """20 ``generate(compile=True)`` calls with ragged batch sizes and prompt lengths, alternating
    between two models of the same architecture: at most one graph per shape bucket (dynamo's own
    graph counter), the eager cached tokens on every row. Without buckets every distinct
    (batch, cache length[, encoder length]) is a graph of its own: counted here, it is far more
    than the buckets and than dynamo's default recompile limit (8)."""
    models = [_model(family), _model(family)]
    with torch.no_grad():
        for p in models[1].parameters():  # a second model with other weights, same shapes
            p.mul_(-1.5)
    sweep = _sweep()
    buckets = {static_buckets(family, [len(p) for p in prompts], new) for prompts, new in sweep}
    if family == "decllm":  # the shapes the step had before bucketing: (batch, bos + prompt + new)
        exact = {(len(ps), 1 + max(map(len, ps)) + new) for ps, new in sweep}
    else:  # (batch, encoder length, new)
        exact = {(len(ps), max(map(len, ps)), new) for ps, new in sweep}
    assert len(buckets) == 2 and len(exact) > 8, (buckets, exact)

    before = _graphs()
    for i, (prompts, new) in enumerate(sweep):
        m = models[i % 2]
        compiled = _call(m, prompts, new, compile=True)
        assert compiled == _call(m, prompts, new), f"call {i}: batch {len(prompts)}"
        assert [len(r) for r in compiled] == [new] * len(prompts)
    graphs = _graphs() - before
    assert 1 <= graphs <= len(buckets) < len(exact)


def _trace_only_step(monkeypatch, family):
    """Swap the family's compiled step for a trace-only one (``backend="eager"``: dynamo still makes
    and counts one graph per shape, without inductor's minutes) on a code object of its own, so its
    graphs and recompile count start from zero."""
    inner = G._decllm_step if family == "decllm" else G._redllm_step
    fresh = types.FunctionType(inner.__code__.replace(), inner.__globals__, inner.__name__)
    monkeypatch.setitem(G._COMPILED, (family, "default"),
                        torch.compile(fresh, backend="eager", fullgraph=True, dynamic=False))
    monkeypatch.setattr(G, "_GRAPH_KEYS", {})


# same batch bucket (4) and length bucket (64), three different exact shapes
SAME_BUCKET = [([[5, 6, 7]] * 3, 3), ([[5, 6]] * 4, 3), ([[5, 6, 7, 8, 9]] * 3, 4)]


@pytest.mark.parametrize("family", ["decllm", "redllm"])
def test_graph_count_sees_per_shape_compiles(family, monkeypatch):
    """The counter the sweep test relies on can fail: with the ladder replaced by exact sizes
    (what ``dynamic=False`` per shape did before buckets) every shape is a graph of its own; with
    the ladder the same calls make one. Same tokens as eager either way."""
    m = _model(family)
    _trace_only_step(monkeypatch, family)
    before = _graphs()
    for prompts, new in SAME_BUCKET:
        assert _call(m, prompts, new, compile=True) == _call(m, prompts, new)
    assert _graphs() - before == 1
    monkeypatch.setattr(G, "bucket", lambda n, floor: n)
    before = _graphs()
    for prompts, new in SAME_BUCKET:
        assert _call(m, prompts, new, compile=True) == _call(m, prompts, new)
    assert _graphs() - before == len(SAME_BUCKET)


# three different buckets: (batch 1, cache length 64), (2, 64), (1, 128)
THREE_BUCKETS = [([[5, 6]], 3), ([[5, 6]] * 2, 3), ([list(range(2, 60)) + [5] * 12], 3)]


def test_more_buckets_than_the_recompile_limit(monkeypatch):
    """More buckets than dynamo's recompile limit: the limit is raised deliberately and every bucket
    compiles (a fall back to eager would add no graph). With that reservation switched off, hitting
    the limit is an error naming the setting -- never a silent slowdown. (The reservation is in the
    loop both families share; DecLLM stands for both.)"""
    m = _model("decllm")
    assert len({static_buckets("decllm", [len(p) for p in ps], n) for ps, n in THREE_BUCKETS}) == 3
    _trace_only_step(monkeypatch, "decllm")
    name = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    with torch._dynamo.config.patch(**{name: 1}):
        before = _graphs()
        for prompts, new in THREE_BUCKETS:
            assert _call(m, prompts, new, compile=True) == _call(m, prompts, new)
        assert _graphs() - before == 3
        assert getattr(torch._dynamo.config, name) == 3 + G.RECOMPILE_HEADROOM

    _trace_only_step(monkeypatch, "decllm")
    monkeypatch.setattr(G, "_reserve_recompiles", lambda *a: None)
    with torch._dynamo.config.patch(**{name: 1}):
        _call(m, *THREE_BUCKETS[0], compile=True)
        with pytest.raises(RuntimeError, match=f"the decllm step hit torch._dynamo.config.{name} \\(1\\)"):
            _call(m, *THREE_BUCKETS[1], compile=True)


def test_reserve_recompiles_raises_both_limits(monkeypatch):
    monkeypatch.setattr(G, "_GRAPH_KEYS", {})
    name, acc = G._dynamo_limit_names()
    with torch._dynamo.config.patch(**{name: 2, acc: 100}):
        for key in range(5):
            G._reserve_recompiles(("decllm", "default"), key)
        G._reserve_recompiles(("decllm", "default"), 0)  # seen: nothing to add
        assert getattr(torch._dynamo.config, name) == 5 + G.RECOMPILE_HEADROOM
        assert getattr(torch._dynamo.config, acc) == 100 + 5 + G.RECOMPILE_HEADROOM - 2
        G._reserve_recompiles(("redllm", "default"), 0)  # another step: room already there
        assert getattr(torch._dynamo.config, name) == 5 + G.RECOMPILE_HEADROOM


def test_bucket_ladder():
    assert [G.bucket(n, 1) for n in (1, 2, 3, 4, 5, 8, 9)] == [1, 2, 4, 4, 8, 8, 16]
    assert [G.bucket(n, 64) for n in (1, 63, 64, 65, 200)] == [64, 64, 64, 128, 256]
    # DecLLM: bos + longest prompt + new tokens; RedLLM: new tokens, longest prompt
    assert static_buckets("decllm", [3, 60], 3) == (2, 64) and static_buckets("decllm", [3, 61], 3) == (2, 128)
    assert static_buckets("decllm", [61], 3, add_bos=False) == (1, 64)
    assert static_buckets("redllm", [3, 64, 1], 65) == (4, 128, 64)
    with pytest.raises(ValueError, match="family must be"):
        static_buckets("gpt", [1], 1)
