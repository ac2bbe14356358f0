"""The study's evaluations as units: each gets a context whose loader hands it tiny models built in
memory (no training, no checkpoint file), and writes its JSON; the scoring helpers they share."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lightning_redllm.config import ModelConfig, num_parameters
from lightning_redllm.models import build_model
from lightning_redllm.study import load_study_config
from lightning_redllm.study.evaluations import EVALUATIONS, EvalContext
from lightning_redllm.study.plan import instruct_runs, pretrain_runs
from lightning_redllm.study.scoring import options_of, read_flan, score_pairs
from lightning_redllm.tokenizer import load_tokenizer

TINY = {"d_model": 32, "n_heads": 1, "head_dim": 32, "ffn_dim": 64, "n_layers": 1, "n_encoder_layers": 1,
        "n_decoder_layers": 1}
CONFIG = f"""
name: units
out_dir: OUT
families: [redllm, decllm]
sizes: {{s: {{preset: tiny, overrides: {json.dumps(TINY)}}}}}
pretrain: {{}}
instruct: {{variants: [redllm, decllm_biattn], held_out_tasks: [kjv_book_of_verse]}}
evaluate:
  perplexity: {{length: 64, max_sequences: 2}}
  instruct: {{max_examples: 2}}
  quality_flops: {{prompt_len: 16, new_tokens: 4}}
"""


def _model(label: str):
    """The tiny model a run label names (``redllm-s``, ``decllm_biattn-s``), randomly initialized."""
    variant = label.rsplit("-", 1)[0]
    torch.manual_seed(0)
    cfg = ModelConfig.from_name(f"{variant.split('_')[0]}-tiny", **TINY,
                                **({"bidirectional_prefix": True} if variant == "decllm_biattn" else {}))
    model = build_model(cfg)
    model.init_weights()
    return model.eval(), cfg


@pytest.fixture
def unit(tmp_path) -> tuple[EvalContext, list[str]]:
    """A context over the config's runs whose loader builds the model a run names; the labels it loaded."""
    path = tmp_path / "study.yaml"
    path.write_text(CONFIG.replace("OUT", str(tmp_path / "out")))
    cfg = load_study_config(path)
    tok = load_tokenizer("bundled-bpe-4k")
    loaded: list[str] = []

    def load(ckpt: Path):
        label = ckpt.parent.parent.name
        loaded.append(label)
        model, mcfg = _model(label)
        return model, tok, mcfg

    ctx = EvalContext(cfg, tmp_path / "out", pretrain_runs(cfg), instruct_runs(cfg), load, log=lambda m: None)
    ctx.out.mkdir(parents=True)
    return ctx, loaded


def test_perplexity_then_quality_flops(unit):
    ctx, loaded = unit
    summary = EVALUATIONS["perplexity"](ctx)
    assert loaded == ["redllm-s", "decllm-s"]
    res = json.loads((ctx.out / "perplexity.json").read_text())
    assert res["kind"] == "lightning_redllm.study_perplexity/1" and res["length"] == 64 and res["prefix_len"] == 32
    assert set(res["models"]) == {"redllm-s", "decllm-s"}
    for label, m in res["models"].items():
        assert m["family"] == label.split("-")[0] and m["parameters"] == num_parameters(_model(label)[1])
        assert "all" in m["matched_loss"] and len(m["matched_loss"]) > 2  # per source + all
        # an untrained model is close to uniform over the 4096-token vocabulary
        assert abs(m["matched_loss"]["all"] - math.log(4096)) < 0.5
        assert m["own_objective"]["all"]["tokens"] > 0 and m["val_loss_training"] is None  # no training log
    best = min(res["models"], key=lambda k: res["models"][k]["matched_loss"]["all"])
    assert summary == f"best matched loss {res['models'][best]['matched_loss']['all']:.3f} ({best})"

    assert EVALUATIONS["quality_flops"](ctx) == "2 pretrained points"  # reads perplexity.json, loads no model
    assert loaded == ["redllm-s", "decllm-s"]
    q = json.loads((ctx.out / "quality_flops.json").read_text())
    assert q["prompt_len"] == 16 and q["new_tokens"] == 4 and "instruct" not in q
    for pt in q["pretrained"]:
        assert pt["value"] == pytest.approx(math.exp(res["models"][pt["label"]]["matched_loss"]["all"]))
        assert pt["inference_flops"] > 0
    assert (ctx.out / "quality_vs_flops_pretrained.png").exists()


def test_instruct_evaluation_on_seen_and_held_out_tasks(unit):
    ctx, loaded = unit
    assert EVALUATIONS["instruct"](ctx) == "2 tuned models, 5 tasks"
    assert loaded == ["redllm-s", "decllm_biattn-s"]
    res = json.loads((ctx.out / "instruct_eval.json").read_text())
    assert res["held_out_tasks"] == ["kjv_book_of_verse"] and set(res["models"]) == {"redllm-s", "decllm_biattn-s"}
    for m in res["models"].values():
        assert {t for t, v in m["tasks"].items() if v["held_out"]} == {"kjv_book_of_verse"}
        assert all(v["examples"] == 2 for v in m["tasks"].values())
        held = m["tasks"]["kjv_book_of_verse"]
        assert m["held_out_loss"] == held["loss"]  # the only held-out task
        assert 0 <= held["mc_accuracy"] <= 1 and 0 < held["mc_chance"] < 1  # the multiple-choice task
        seen = [v["loss"] for v in m["tasks"].values() if not v["held_out"]]
        assert m["seen_loss"] == pytest.approx(sum(seen) / len(seen))
        assert all(abs(v["loss"] - math.log(4096)) < 1.0 for v in m["tasks"].values())  # untrained: near uniform


@pytest.mark.parametrize("label", ["redllm-s", "decllm-s", "decllm_biattn-s"])
def test_score_pairs_does_not_depend_on_the_batch(label):
    """Padding in a batch changes no pair's score: scored together or one at a time, the same NLL."""
    model, _ = _model(label)
    tok = load_tokenizer("bundled-bpe-4k")
    rows = read_flan("val")[:5]
    pairs = [(tok.encode(r["inputs"])[:40], tok.encode(r["targets"])[:20] + [tok.eos_id]) for r in rows]
    together = score_pairs(model, tok, pairs)
    alone = [score_pairs(model, tok, [p])[0] for p in pairs]
    assert [n for _, n in together] == [len(t) for _, t in pairs] == [n for _, n in alone]
    for (a, _), (b, _) in zip(together, alone):
        assert a == pytest.approx(b, rel=1e-4)  # fp32


def test_options_of():
    assert options_of("Which book?\n\nOPTIONS:\n- Genesis\n- Exodus \nnot an option\n- Job") == ["Genesis", "Exodus", "Job"]
