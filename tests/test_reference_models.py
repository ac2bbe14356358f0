"""DecLLM and RedLLM against the independent float64 reference in ``reference_models.py``.

Every parameter (RMSNorm scales included) is perturbed away from its init, the model runs in
float64, and logits and loss must equal the reference's to fp64 accuracy. The architecture the
reference encodes comes from the study (DESIGN.md section 1), not from the library: in particular
the tests hand the reference their own plain ``spec`` dict, so a wrong library default (e.g.
``attn_out_norm``) cannot leak into the reference.
"""
from __future__ import annotations

import pytest
import torch

from lightning_redllm.config import ModelConfig
from lightning_redllm.models import build_model
from reference_models import ref_decllm_logits, ref_loss, ref_redllm_encode, ref_redllm_logits

pytestmark = pytest.mark.numerics

# fp64 end to end: each op rounds at ~1e-16 relative and the tiny models are a few hundred ops
# deep (~1e-14 worst case); 1e-10 leaves ~1e4x headroom yet sits ~1e6x below the smallest
# architectural difference the tests are meant to catch (~1e-4 and up).
TOL = dict(atol=1e-10, rtol=1e-10)
Z_LOSS = 1e-4
VOCAB = 97
BASE = dict(vocab_size=VOCAB, d_model=32, n_heads=4, head_dim=8, ffn_dim=64, max_seq_len=16)


def spec(family: str, **kw) -> dict:
    layers = dict(n_layers=2) if family == "decllm" else dict(n_encoder_layers=2, n_decoder_layers=2)
    return dict(family=family, **BASE, **layers, **kw)


def build(s: dict, seed: int = 0):
    """The library model for ``s``, weights initialized then perturbed, float64, eval."""
    torch.manual_seed(seed)
    model = build_model(ModelConfig(**s))
    model.init_weights()
    model.double().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            # norm scales (1-D) move well away from 1; matrices get noise of the init's size
            p.add_((0.2 if p.dim() == 1 else 0.02) * noise)
    return model


def state(model) -> dict:
    return {k: v.detach() for k, v in model.state_dict().items()}


def ids(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=gen)


def labels_for(gen: torch.Generator, b: int, t: int) -> torch.Tensor:
    y = ids(gen, b, t)
    y[0, :2] = -100
    y[-1, -3:] = -100
    return y


# --------------------------------------------------------------------------- DecLLM
DEC_VARIANTS = {
    "mha": {},                         # qkv_norm on (default), no attention-output norm
    "gqa": {"n_kv_heads": 2},
    "no_qkv_norm": {"qkv_norm": False},
    "attn_out_norm": {"attn_out_norm": True, "n_kv_heads": 1},
}


@pytest.mark.parametrize("variant", sorted(DEC_VARIANTS))
def test_decllm_logits_and_loss_match_reference(variant):
    s = spec("decllm", **DEC_VARIANTS[variant])
    model = build(s)
    gen = torch.Generator().manual_seed(10)
    x = ids(gen, 3, 11)
    y = labels_for(gen, 3, 11)
    with torch.no_grad():
        out = model(x, labels=y, z_loss=Z_LOSS, return_logits=True)
    ref = ref_decllm_logits(state(model), s, x)
    assert out.logits.dtype == torch.float64
    torch.testing.assert_close(out.logits, ref, **TOL)  # fp64 vs fp64: see TOL
    torch.testing.assert_close(out.loss, ref_loss(ref, y, Z_LOSS), **TOL)  # fp64 loss of fp64 logits: see TOL


def test_decllm_prefix_lm_matches_reference():
    s = spec("decllm", n_kv_heads=2)
    model = build(s, seed=3)
    gen = torch.Generator().manual_seed(11)
    x = ids(gen, 4, 10)
    y = labels_for(gen, 4, 10)
    prefix = torch.tensor([1, 3, 6, 10])  # distinct per example: causal ... fully bidirectional
    with torch.no_grad():
        out = model(x, labels=y, prefix_lengths=prefix, z_loss=Z_LOSS, return_logits=True)
        causal = model(x).logits
    ref = ref_decllm_logits(state(model), s, x, prefix_lengths=prefix)
    torch.testing.assert_close(out.logits, ref, **TOL)  # fp64 vs fp64: see TOL
    torch.testing.assert_close(out.loss, ref_loss(ref, y, Z_LOSS), **TOL)  # fp64 vs fp64: see TOL
    # the case is not vacuous: a prefix of 1 is causal LM, longer prefixes change early positions
    torch.testing.assert_close(out.logits[0], causal[0], **TOL)  # same computation, fp64: see TOL
    assert (out.logits[1:, :2] - causal[1:, :2]).abs().max() > 1e-4


# --------------------------------------------------------------------------- RedLLM
RED_VARIANTS = {
    "mha": {},                         # qkv_norm on, attention-output norm on (study defaults)
    "gqa": {"n_kv_heads": 2},
}


def ragged_batch(gen: torch.Generator):
    """Encoder right-padded to S=9 (lengths 9, 5, 2: decoder positions start at 9, 5, 2), pad
    slots filled with real-looking ids so a dropped padding mask shows; decoder T=6."""
    lengths = torch.tensor([9, 5, 2])
    enc = ids(gen, 3, 9)
    dec = ids(gen, 3, 6)
    y = labels_for(gen, 3, 6)
    return enc, lengths, dec, y


@pytest.mark.parametrize("variant", sorted(RED_VARIANTS))
def test_redllm_ragged_batch_logits_and_loss_match_reference(variant):
    s = spec("redllm", **RED_VARIANTS[variant])
    model = build(s, seed=5)
    enc, lengths, dec, y = ragged_batch(torch.Generator().manual_seed(12))
    with torch.no_grad():
        out = model(enc, dec, y, encoder_lengths=lengths, z_loss=Z_LOSS, return_logits=True)
    ref = ref_redllm_logits(state(model), s, enc, lengths, dec)
    assert out.logits.dtype == torch.float64
    torch.testing.assert_close(out.logits, ref, **TOL)  # fp64 vs fp64: see TOL
    torch.testing.assert_close(out.loss, ref_loss(ref, y, Z_LOSS), **TOL)  # fp64 vs fp64: see TOL


def test_redllm_unpadded_batch_matches_reference():
    s = spec("redllm")
    model = build(s, seed=6)
    gen = torch.Generator().manual_seed(13)
    enc, dec = ids(gen, 2, 7), ids(gen, 2, 5)
    y = labels_for(gen, 2, 5)
    with torch.no_grad():
        out = model(enc, dec, y, z_loss=Z_LOSS, return_logits=True)  # encoder_lengths=None: k = S
    ref = ref_redllm_logits(state(model), s, enc, None, dec)
    torch.testing.assert_close(out.logits, ref, **TOL)  # fp64 vs fp64: see TOL
    torch.testing.assert_close(out.loss, ref_loss(ref, y, Z_LOSS), **TOL)  # fp64 vs fp64: see TOL


def test_redllm_encode_matches_reference():
    s = spec("redllm")
    model = build(s, seed=7)
    enc, lengths, _, _ = ragged_batch(torch.Generator().manual_seed(14))
    with torch.no_grad():
        got = model.encode(enc, lengths)
    ref = ref_redllm_encode(state(model), s, enc, lengths)
    assert torch.equal(got.lengths, lengths)
    for b, n in enumerate(lengths.tolist()):  # rows past an example's length are padding: unspecified
        torch.testing.assert_close(got.hidden[b, :n], ref[b, :n], **TOL)  # fp64 vs fp64: see TOL


def test_redllm_padded_row_equals_example_alone():
    s = spec("redllm")
    model = build(s, seed=8)
    enc, lengths, dec, y = ragged_batch(torch.Generator().manual_seed(15))
    with torch.no_grad():
        batch = model(enc, dec, encoder_lengths=lengths).logits
        for b, n in enumerate(lengths.tolist()):
            alone = model(enc[b:b + 1, :n], dec[b:b + 1]).logits  # no padding, no lengths
            # same math on a shorter key axis: only fp64 summation order differs, see TOL
            torch.testing.assert_close(batch[b:b + 1], alone, **TOL)
            ref = ref_redllm_logits(state(model), s, enc[b:b + 1, :n], None, dec[b:b + 1])
            torch.testing.assert_close(alone, ref, **TOL)  # fp64 vs fp64: see TOL


def test_reference_loss_by_hand():
    """The reference loss itself, on numbers small enough to check on paper."""
    logits = torch.tensor([[[0.0, 0.0], [1.0, 3.0]]], dtype=torch.float64)
    labels = torch.tensor([[0, -100]])
    lse = torch.log(torch.tensor(2.0, dtype=torch.float64))
    expected = lse + 0.5 * lse * lse
    torch.testing.assert_close(ref_loss(logits, labels, 0.5), expected, atol=1e-15, rtol=1e-15)  # one op deep
