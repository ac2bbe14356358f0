"""Core model tests: presets, HF Llama reference, mask/causality/RoPE invariants, bad input."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

from lightning_redllm.config import PRESETS, ModelConfig, num_parameters
from lightning_redllm.models import DecLLM, RedLLM, build_model

pytestmark = pytest.mark.numerics

# The study's Table 1 (arXiv 2510.26622), written out here rather than read from the code:
# size: (d_model, ffn, heads, DecLLM layers, RedLLM layers per stack, published params in billions Dec / Red)
STUDY = {
    "150m": (1024, 4096, 8, 8, 3, 0.168, 0.147),
    "1b": (2048, 8192, 16, 16, 7, 1.14, 1.12),
    "2b": (2560, 10240, 20, 20, 9, 2.18, 2.21),
    "4b": (3072, 12288, 24, 24, 10, 3.73, 3.50),
    "8b": (4096, 16384, 32, 32, 14, 8.72, 8.59),
}
STUDY_VOCAB, STUDY_HEAD_DIM = 32768, 128


def study_parameter_count(family: str, size: str) -> int:
    """Parameters from the study's description: MHA with head dim 128 (q, k, v, o: 4 matrices
    d x heads*128), a 3-matrix SwiGLU (gate, up: d x ffn; down: ffn x d), no biases, one tied
    embedding (vocab x d) shared by every input and the output, a learned RMSNorm scale (d) before
    each sub-layer and at the top of each stack."""
    d, ffn, heads, dec_layers, red_layers, _, _ = STUDY[size]
    attn = 4 * d * heads * STUDY_HEAD_DIM
    mlp = 3 * d * ffn
    emb = STUDY_VOCAB * d
    if family == "decllm":
        return emb + dec_layers * (attn + mlp + 2 * d) + d
    encoder = red_layers * (attn + mlp + 2 * d) + d
    decoder = red_layers * (2 * attn + mlp + 3 * d) + d  # + cross-attention and its norm
    return emb + encoder + decoder


@pytest.mark.parametrize("size", sorted(STUDY))
@pytest.mark.parametrize("family", ["decllm", "redllm"])
def test_preset_parameter_counts_match_the_study(family, size):
    d, ffn, heads, dec_layers, red_layers, pub_dec, pub_red = STUDY[size]
    cfg = ModelConfig.from_name(f"{family}-{size}")
    assert (cfg.d_model, cfg.ffn_dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.vocab_size) == (
        d, ffn, heads, heads, STUDY_HEAD_DIM, STUDY_VOCAB)
    with torch.device("meta"):
        model = build_model(cfg)
    expected = study_parameter_count(family, size)
    assert model.num_parameters() == expected  # exact: any missing/extra/untied matrix shows
    assert num_parameters(cfg) == expected
    published = (pub_dec if family == "decllm" else pub_red) * 1e9
    # the table rounds to 3 significant digits (and may count norms differently): 1%
    assert abs(expected - published) / published < 0.01, (expected, published)


def tiny(family: str, **kw) -> ModelConfig:
    base = dict(vocab_size=97, d_model=32, n_heads=4, head_dim=8, ffn_dim=64, n_layers=2,
                n_encoder_layers=2, n_decoder_layers=2, max_seq_len=16)
    base.update(kw)
    return ModelConfig(family=family, **base)


def make(family: str, **kw):
    torch.manual_seed(0)
    m = build_model(tiny(family, **kw))
    m.init_weights()
    return m.eval()


def test_config_yaml_round_trip_and_validation():
    for name in PRESETS:
        cfg = ModelConfig.from_name(name)
        again = ModelConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
        assert again == cfg
    assert ModelConfig.from_name("redllm-1b").attn_out_norm is True
    assert ModelConfig.from_name("decllm-1b").attn_out_norm is False
    with pytest.raises(ValueError, match="n_kv_heads"):
        ModelConfig(n_heads=8, n_kv_heads=3)
    with pytest.raises(ValueError, match="d_modl"):
        ModelConfig.from_dict({"d_modl": 3})
    with pytest.raises(ValueError, match="family"):
        ModelConfig(family="t5")
    with pytest.raises(ValueError, match="redllm-3b"):
        ModelConfig.from_name("redllm-3b")
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig(dropout=1.5)
    assert ModelConfig.from_name("redllm-tiny", dropout=0.05).dropout == 0.05


def test_decllm_matches_hf_llama():
    transformers = pytest.importorskip("transformers")
    cfg = tiny("decllm", qkv_norm=False, n_kv_heads=2, rope_theta=10000.0)
    torch.manual_seed(0)
    ours = DecLLM(cfg).double()
    ours.init_weights()
    for p in ours.parameters():  # non-trivial norm scales too
        p.data += 0.01 * torch.randn_like(p)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps, tie_word_embeddings=True, attention_bias=False,
        mlp_bias=False, max_position_embeddings=64,
    )
    hf_cfg._attn_implementation = "eager"
    ref = transformers.LlamaForCausalLM(hf_cfg).double().eval()
    sd = {"model.embed_tokens.weight": ours.embed.weight, "model.norm.weight": ours.norm.weight}
    for i, layer in enumerate(ours.layers):
        pre = f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            sd[pre + f"self_attn.{n}.weight"] = getattr(layer.self_attn, n).weight
        for n in ("gate_proj", "up_proj", "down_proj"):
            sd[pre + f"mlp.{n}.weight"] = getattr(layer.mlp, n).weight
        sd[pre + "input_layernorm.weight"] = layer.attn_norm.weight
        sd[pre + "post_attention_layernorm.weight"] = layer.mlp_norm.weight
    missing, unexpected = ref.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    ref.tie_weights()
    x = torch.randint(0, cfg.vocab_size, (2, 12))
    with torch.no_grad():
        ours_logits = ours(x).logits
        ref_logits = ref(input_ids=x).logits
    # HF computes RoPE frequencies (and the loss) in fp32 even in an fp64 model, so the agreement is
    # fp32-level: |diff| ~ 1e-7 relative per op; 1e-5 leaves room for 2 layers and any CPU kernel
    torch.testing.assert_close(ours_logits, ref_logits, atol=1e-5, rtol=1e-5)
    # the loss too (HF shifts inside; ours takes pre-shifted labels); HF returns it in fp32
    labels = torch.cat([x[:, 1:], torch.full((2, 1), -100)], dim=1)
    with torch.no_grad():
        ref_loss = ref(input_ids=x, labels=x).loss
        ours_loss = ours(x, labels=labels).loss
    torch.testing.assert_close(ours_loss.float(), ref_loss, atol=1e-5, rtol=1e-5)


def test_decllm_is_causal():
    m = make("decllm")
    x = torch.randint(0, 97, (2, 10))
    y = x.clone()
    y[:, 6] = (y[:, 6] + 1) % 97
    with torch.no_grad():
        a, b = m(x).logits, m(y).logits
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_decllm_prefix_tokens_see_each_other():
    m = make("decllm")
    x = torch.randint(0, 97, (1, 10))
    y = x.clone()
    y[:, 3] = (y[:, 3] + 1) % 97
    p = torch.tensor([5])
    with torch.no_grad():
        a, b = m(x, prefix_lengths=p).logits, m(y, prefix_lengths=p).logits
        # changing a prefix token changes earlier prefix positions ...
        assert not torch.allclose(a[:, :3], b[:, :3])
        # ... and a prefix of 1 is the plain causal model
        torch.testing.assert_close(m(x, prefix_lengths=torch.tensor([1])).logits, m(x).logits)
        # a token after the prefix stays invisible to the prefix
        z = x.clone()
        z[:, 7] = (z[:, 7] + 1) % 97
        torch.testing.assert_close(m(z, prefix_lengths=p).logits[:, :7], a[:, :7])


def test_prefix_mask_function():
    from lightning_redllm.nn import build_mask, causal, or_masks, prefix
    m = build_mask(or_masks(causal, prefix(torch.tensor([3, 1]))), 2, 5, 5, torch.device("cpu"))[:, 0]
    assert m[0, :3, :3].all() and not m[0, 2, 3] and m[0, 4].all()
    assert torch.equal(m[1], torch.ones(5, 5).tril().bool())


def test_redllm_encoder_bidirectional_decoder_causal():
    m = make("redllm")
    enc = torch.randint(0, 97, (2, 8))
    dec = torch.randint(0, 97, (2, 6))
    with torch.no_grad():
        h = m.encode(enc).hidden
        enc2 = enc.clone()
        enc2[:, 6] = (enc2[:, 6] + 1) % 97
        h2 = m.encode(enc2).hidden
        assert not torch.allclose(h[:, :6], h2[:, :6])  # earlier encoder states see later tokens
        a = m(enc, dec).logits
        dec2 = dec.clone()
        dec2[:, 4] = (dec2[:, 4] + 1) % 97
        b = m(enc, dec2).logits
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_redllm_decoder_invariant_to_encoder_padding():
    m = make("redllm")
    enc = torch.randint(1, 97, (2, 7))
    dec = torch.randint(0, 97, (2, 5))
    lengths = torch.tensor([7, 4])
    padded = torch.cat([enc, torch.zeros(2, 5, dtype=torch.long)], dim=1)
    padded[1, 4:] = 0  # second example: 4 real tokens, then 8 pads
    with torch.no_grad():
        a = m(enc, dec, encoder_lengths=lengths).logits
        b = m(padded, dec, encoder_lengths=lengths).logits
        solo = m(enc[1:, :4], dec[1:]).logits  # example 2 alone, unpadded
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b[1:], solo, atol=1e-5, rtol=1e-5)


def test_rope_relative_property_across_encoder_and_decoder():
    from lightning_redllm.nn import RotaryEmbedding, apply_rope
    rope = RotaryEmbedding(16, max_len=8)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(pq, pk):
        cq, sq = rope(torch.tensor([[pq]]))
        ck, sk = rope(torch.tensor([[pk]]))
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    base = score(5, 2)
    for shift in (1, 7, 300):  # 300 forces the table to grow
        torch.testing.assert_close(score(5 + shift, 2 + shift), base, atol=1e-4, rtol=1e-4)
    # RedLLM cross-attention: the decoder query sits at k + j, encoder key i at i; the score of a
    # (query, key) pair depends only on k + j - i, e.g. prompt length 3 / key 1 == length 6 / key 4
    m = make("redllm", n_decoder_layers=1, n_encoder_layers=1)
    attn = m.decoder[0].cross_attn
    x, e = torch.randn(1, 1, 32), torch.randn(1, 1, 32)

    def cross_score(q_pos, k_pos):
        qc, qs = m.rope(torch.tensor([[q_pos]]))
        kc, ks = m.rope(torch.tensor([[k_pos]]))
        qh = apply_rope(attn.q_proj(x).view(1, 1, 4, 8).transpose(1, 2), qc, qs)
        kh = apply_rope(attn.k_proj(e).view(1, 1, 4, 8).transpose(1, 2), kc, ks)
        return qh @ kh.transpose(-1, -2)

    with torch.no_grad():
        torch.testing.assert_close(cross_score(3 + 0, 1), cross_score(6 + 0, 4), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cross_score(3 + 2, 0), cross_score(4 + 1, 0), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(cross_score(3, 1), cross_score(3, 2))


def test_redllm_continuous_positions():
    m = make("redllm")
    seen = []
    orig = m.rope.forward

    def spy(positions, max_position=None, **kw):
        seen.append(positions.clone())
        return orig(positions, max_position, **kw)

    m.rope.forward = spy
    with torch.no_grad():
        m(torch.randint(1, 97, (2, 6)), torch.randint(0, 97, (2, 3)), encoder_lengths=torch.tensor([6, 2]))
    enc_pos, dec_pos = seen[0], seen[1]
    assert enc_pos[0].tolist() == list(range(6))
    assert dec_pos.tolist() == [[6, 7, 8], [2, 3, 4]]


def test_bad_inputs_name_the_value():
    d, r = make("decllm"), make("redllm")
    with pytest.raises(ValueError, match="97"):
        d(torch.tensor([[1, 97]]))
    with pytest.raises(ValueError, match="-1"):
        d(torch.tensor([[1, -1]]))
    with pytest.raises(ValueError, match="dtype"):
        d(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="shape"):
        d(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"encoder batch \(2\) and decoder batch \(3\)"):
        r(torch.ones(2, 4, dtype=torch.long), torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels shape"):
        d(torch.ones(2, 4, dtype=torch.long), labels=torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="encoder_lengths"):
        r(torch.ones(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.long), encoder_lengths=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="family"):
        DecLLM(tiny("redllm"))


def test_meta_init_then_materialize():
    cfg = tiny("redllm")
    with torch.device("meta"):
        m = RedLLM(cfg)
    m.to_empty(device="cpu")
    m.init_weights()
    out = m(torch.randint(0, 97, (1, 5)), torch.randint(0, 97, (1, 3)))
    assert torch.isfinite(out.logits).all()
    assert "rope.cos" not in m.state_dict()


@pytest.mark.parametrize("family, layers, writes", [
    ("decllm", dict(n_layers=3), {"layers": 6}),
    ("redllm", dict(n_encoder_layers=2, n_decoder_layers=2), {"encoder": 4, "decoder": 6}),
])
def test_residual_write_variance_at_init_follows_its_stream(family, layers, writes):
    """At init every residual write (o_proj of self- and cross-attention, down_proj) adds
    init_std^2 / W * fan_in * E[input^2] of variance, W = the writes of its own stream (counted here
    from the architecture: 2 per DecLLM/encoder block, 3 per RedLLM decoder block)."""
    cfg = ModelConfig(family=family, vocab_size=512, d_model=256, n_heads=2, head_dim=128, ffn_dim=1024, **layers)
    torch.manual_seed(0)
    m = build_model(cfg)
    m.init_weights()
    seen: dict[str, tuple[float, float, int]] = {}

    def hook(name):
        def fn(mod, args, out):
            x = args[0]
            seen[name] = (out.var().item(), x.pow(2).mean().item(), x.shape[-1])
        return fn

    for name, mod in m.named_modules():
        if name.endswith(("o_proj", "down_proj")):
            mod.register_forward_hook(hook(name))
    x = torch.randint(0, 512, (4, 64))
    with torch.no_grad():
        m(x) if family == "decllm" else m(x, x)
    per_stream = {s: 0 for s in writes}
    for name, (var_out, mean_sq_in, fan_in) in seen.items():
        stream = name.split(".")[0]
        per_stream[stream] += 1
        expected = cfg.init_std ** 2 / writes[stream] * fan_in * mean_sq_in
        # sampling error of a 256-wide random projection over 256 tokens: a few %; 20% still
        # separates W from the next plausible count (e.g. 2 per block: 4/8 or 6/8 for RedLLM)
        assert 0.8 < var_out / expected < 1.25, (name, var_out / expected)
    assert per_stream == writes  # every write of every stream was seen


def test_dataclass_fields_documented():
    doc = ModelConfig.__doc__
    for f in dataclasses.fields(ModelConfig):
        assert f.name in doc, f.name


def test_explicit_positions_beyond_the_table_grow_it():
    m = make("decllm").double()  # max_seq_len 16: the initial RoPE table
    x = torch.randint(0, 97, (1, 4))
    with torch.no_grad():
        far = m(x, positions=torch.arange(100, 104).unsqueeze(0)).logits
        near = m(x).logits
        gap = m(x, positions=torch.tensor([[0, 1, 2, 50]])).logits
    # RoPE is relative: shifting every position changes nothing (fp64 compute: rounding ~1e-16)
    torch.testing.assert_close(far, near, atol=1e-12, rtol=1e-12)
    assert (gap[0, 3] - near[0, 3]).abs().max() > 1e-3  # but the distances matter


@pytest.mark.parametrize("family", ["decllm", "redllm"])
def test_last_position_logits_equal_the_full_logits_last_row(family):
    """``return_logits="last"`` (what generation asks for at prefill) projects only the last position."""
    from lightning_redllm.config import ModelConfig
    from lightning_redllm.models import build_model

    torch.manual_seed(0)
    cfg = ModelConfig.from_name(f"{family}-tiny", d_model=32, n_heads=2, head_dim=16, ffn_dim=64, n_layers=1,
                                n_encoder_layers=1, n_decoder_layers=1)
    model = build_model(cfg).eval()
    model.init_weights()
    ids = torch.randint(3, cfg.vocab_size, (2, 7))
    args = (ids,) if family == "decllm" else (ids, ids[:, :5])
    full = model(*args, return_logits=True).logits
    last = model(*args, return_logits="last").logits
    assert last.shape == (2, 1, cfg.vocab_size)
    torch.testing.assert_close(last, full[:, -1:], rtol=1e-5, atol=1e-5)  # fp32, same matmul on fewer rows
