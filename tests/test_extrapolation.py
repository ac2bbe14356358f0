"""Perplexity scoring against a hand computation, and the length-extrapolation sweep past the
training length (both families, several prefix lengths, one PNG per prefix)."""
from __future__ import annotations

import math

import pytest
import torch

from lightning_redllm.cli.commands import load_for_inference
from lightning_redllm.data.shards import bundled_shards
from lightning_redllm.eval import evaluate_perplexity, iter_documents, score_continuations
from lightning_redllm.eval.extrapolation import default_lengths, extrapolation_sweep, parse_prefix, resolve_prefix
from lightning_redllm.modules import DecLLMModule, RedLLMModule
from lightning_redllm.modules.checkpoint import save_safetensors

SMALL = dict(d_model=64, n_heads=2, head_dim=32, ffn_dim=128, n_layers=2, n_encoder_layers=1, n_decoder_layers=1)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_valid_png(path):
    """The file exists, starts with the PNG signature and decodes to a non-empty image."""
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img.shape[2] in (3, 4)
    assert float(img[..., :3].std()) > 0.01  # not a blank canvas


def _checkpoint(cls, tmp_path, seed=0):
    torch.manual_seed(seed)
    m = cls(overrides=SMALL)
    m.configure_model()
    path = save_safetensors(m.model, m.config, tmp_path / f"{cls.family}.safetensors", tokenizer="bundled-bpe-4k")
    return load_for_inference(path)


def _val_tokens(n_seq, length):
    flat = torch.cat([t for _, t in iter_documents(bundled_shards("pretrain", "val"))])
    return flat[: n_seq * length].view(n_seq, length)


@torch.no_grad()
def _hand_nll(model, tokens, p, bos):
    """Sum of -log softmax(logits)[target] in float64, from the model's plain logits."""
    n, length = tokens.shape
    bos_col = torch.full((n, 1), bos, dtype=torch.long)
    if model.config.family == "redllm":
        dec_in = torch.cat([bos_col, tokens[:, p:-1]], dim=1)
        logits = model(tokens[:, :p], dec_in, return_logits=True).logits  # (N, L-p, V)
        targets = tokens[:, p:]
    else:
        logits = model(torch.cat([bos_col, tokens[:, :-1]], dim=1), return_logits=True).logits[:, p:]
        targets = tokens[:, p:]
    logp = torch.log_softmax(logits.double(), dim=-1)
    return float(-logp.gather(-1, targets.unsqueeze(-1)).sum()), targets.numel(), logits


@pytest.mark.parametrize("cls", [RedLLMModule, DecLLMModule])
@pytest.mark.parametrize("p", [1, 40])
def test_perplexity_equals_hand_computation(cls, p, tmp_path):
    model, tok, _ = _checkpoint(cls, tmp_path)
    tokens = _val_tokens(3, 96)
    nll, n, correct = score_continuations(model, tokens, p, tok.bos_id, batch_size=2)
    ref, ref_n, logits = _hand_nll(model, tokens, p, tok.bos_id)
    assert n == ref_n == 3 * (96 - p)
    assert nll == pytest.approx(ref, rel=1e-5)
    assert correct == int((logits.argmax(-1) == tokens[:, p:]).sum())
    if cls is DecLLMModule:
        # evaluate_perplexity (all tokens predicted) on a single source equals the same hand sum at p = 0
        book = torch.cat([t for s, t in iter_documents(bundled_shards("pretrain", "val")) if s == "book"])[: 2 * 64]
        res = evaluate_perplexity(model, bundled_shards("pretrain", "val"), bos_id=tok.bos_id, lengths=[64],
                                  max_sequences=2)["lengths"][64]["book"]
        seqs = book.view(2, 64)
        bos_col = torch.full((2, 1), tok.bos_id, dtype=torch.long)
        with torch.no_grad():
            lg = model(torch.cat([bos_col, seqs[:, :-1]], 1), return_logits=True).logits
        hand = float(-torch.log_softmax(lg.double(), -1).gather(-1, seqs.unsqueeze(-1)).sum()) / seqs.numel()
        assert res["loss"] == pytest.approx(hand, rel=1e-5)
        assert res["ppl"] == pytest.approx(math.exp(hand), rel=1e-5)


def test_both_families_predict_the_same_tokens(tmp_path):
    red, tok, _ = _checkpoint(RedLLMModule, tmp_path)
    dec, _, _ = _checkpoint(DecLLMModule, tmp_path)
    tokens = _val_tokens(2, 64)
    for p in (1, 17, 63):
        assert score_continuations(red, tokens, p, tok.bos_id)[1] == score_continuations(dec, tokens, p, tok.bos_id)[1]
    with pytest.raises(ValueError, match="prefix_len"):
        score_continuations(dec, tokens, 64, tok.bos_id)


def test_prefix_specs_and_grid():
    assert default_lengths(2048) == [256, 512, 1024, 2048, 4096, 8192, 16384]
    assert default_lengths(256) == [256, 512, 1024, 2048]
    assert resolve_prefix("half", 1000) == 500 and resolve_prefix("1/4", 1000) == 250 and resolve_prefix(1, 9) == 1
    assert parse_prefix("2/4") == "half" and parse_prefix("64") == 64
    for bad in (0, "3/2", "x", True):
        with pytest.raises(ValueError):
            parse_prefix(bad)


def test_extrapolation_sweep_runs_past_the_training_length(tmp_path):
    red, tok, _ = _checkpoint(RedLLMModule, tmp_path)
    dec, _, _ = _checkpoint(DecLLMModule, tmp_path)
    train_len = 128
    lengths = default_lengths(train_len, start=128, factor=8)  # 128 .. 1024, past the 512-position RoPE table
    assert max(lengths) == 8 * train_len > red.config.max_seq_len
    res = extrapolation_sweep({"redllm": red, "decllm": dec}, bundled_shards("pretrain", "val"), bos_id=tok.bos_id,
                              lengths=lengths, prefix_lengths=[1, 32, "half"], tokens_per_source=1024,
                              train_length=train_len)
    assert res["sources"] == ["book", "jargon", "python_docs"]  # the sources with 1024 tokens; fortunes has fewer
    for label in ("redllm", "decllm"):
        pts = res["models"][label]["points"]
        assert {(pt["length"], pt["prefix"]) for pt in pts} == {(n, s) for n in lengths for s in (1, 32, "half")}
        for pt in pts:
            assert math.isfinite(pt["loss"]) and pt["ppl"] == pytest.approx(math.exp(pt["loss"]))
            assert pt["tokens"] == pt["sequences"] * (pt["length"] - pt["prefix_len"])
            # the same token budget per source at every length: the text mix does not drift
            assert all(r["sequences"] * pt["length"] == 1024 for r in pt["per_source"].values())
        beyond = [pt for pt in pts if pt["length"] > train_len]
        assert len(beyond) == 3 * 3  # 256, 512, 1024 x three prefixes
        # an untrained model: near-uniform over the 4096-token vocabulary at every length
        assert all(abs(pt["loss"] - math.log(4096)) < 0.5 for pt in pts)
    # the same (length, prefix) predicts the same number of tokens for both families
    tok_counts = {lb: {(pt["length"], pt["prefix"]): pt["tokens"] for pt in m["points"]} for lb, m in res["models"].items()}
    assert tok_counts["redllm"] == tok_counts["decllm"]

    from lightning_redllm.eval.plots import plot_extrapolation

    pngs = plot_extrapolation(res, tmp_path / "plots")
    assert sorted(p.name for p in pngs) == ["extrapolation_p-half.png", "extrapolation_p1.png", "extrapolation_p32.png"]
    for p in pngs:
        assert_valid_png(p)


def test_sweep_refuses_bad_budgets(tmp_path):
    dec, tok, _ = _checkpoint(DecLLMModule, tmp_path)
    with pytest.raises(ValueError, match="tokens_per_source"):
        extrapolation_sweep({"d": dec}, bundled_shards("pretrain", "val"), bos_id=tok.bos_id, lengths=[512],
                            tokens_per_source=256)
    with pytest.raises(ValueError, match="no source holds"):
        extrapolation_sweep({"d": dec}, bundled_shards("pretrain", "val"), bos_id=tok.bos_id, lengths=[512],
                            tokens_per_source=10 ** 8)
