"""Static KV cache + compiled one-token decoding step (``generate(..., compile=True)``).

The compiled path must give exactly the tokens of the eager cached path and of the uncached path
(which re-runs the whole sequence every step), on ragged batches (DecLLM left padding + attention
mask, RedLLM right-padded encoder + lengths), greedy and seeded sampling, for DecLLM with a
bidirectional prompt too; and its step must really be static: one compiled graph for all steps.

Cost: one inductor compilation per family (the same model object, batch and cache length serve
every call in a family, so later calls hit the compiled graph).
"""
from __future__ import annotations

import warnings

import pytest
import torch

from lightning_redllm.config import ModelConfig
from lightning_redllm.generate import DONE_CHECK_EVERY, SamplingOptions, generate
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
