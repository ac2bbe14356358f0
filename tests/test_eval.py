"""Held-out perplexity per source / per length, and the `evaluate` subcommand."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import lightning as L
import pytest

from lightning_redllm.data.shards import bundled_shards
from lightning_redllm.eval import evaluate_perplexity, iter_documents
from lightning_redllm.modules import DecLLMModule, RedLLMModule
from lightning_redllm.modules.checkpoint import save_safetensors

SMALL = dict(d_model=64, n_heads=2, head_dim=32, ffn_dim=128, n_layers=2, n_encoder_layers=1, n_decoder_layers=1)


@pytest.mark.parametrize("cls", [RedLLMModule, DecLLMModule])
def test_per_source_and_length(cls):
    m = cls(overrides=SMALL)
    m.configure_model()
    res = evaluate_perplexity(m.model, bundled_shards("pretrain", "val"), bos_id=m.tokenizer.bos_id,
                              lengths=[64, 128], max_sequences=4)
    sources = {s for s, _ in iter_documents(bundled_shards("pretrain", "val"))}
    for length in (64, 128):
        rows = res["lengths"][length]
        assert set(rows) - {"all"} <= sources and "all" in rows
        # an untrained model is close to uniform over the 4096-token vocabulary
        assert abs(rows["all"]["loss"] - math.log(4096)) < 0.5
        predicted = length if cls is DecLLMModule else length // 2
        for src, r in rows.items():
            if src != "all":
                assert r["tokens"] == r["sequences"] * predicted
        assert rows["all"]["tokens"] == sum(r["tokens"] for s, r in rows.items() if s != "all")


def test_evaluate_subcommand(tmp_path):
    L.seed_everything(0)
    m = RedLLMModule(overrides=SMALL)
    m.configure_model()
    path = save_safetensors(m.model, m.config, tmp_path / "m.safetensors")
    out = tmp_path / "eval.json"
    r = subprocess.run([sys.executable, "-m", "lightning_redllm", "evaluate", "--ckpt", str(path), "--tokenizer",
                        "bundled-bpe-4k", "--lengths", "64,256", "--max_sequences", "2", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    assert set(data["lengths"]) == {"64", "256"} and data["family"] == "redllm"
    assert "| all |" in r.stdout


def test_bad_lengths():
    m = DecLLMModule(overrides=SMALL)
    m.configure_model()
    with pytest.raises(ValueError, match="lengths"):
        evaluate_perplexity(m.model, bundled_shards("pretrain", "val"), bos_id=2, lengths=[1])
