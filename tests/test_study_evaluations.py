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


def test_zero_shot_scores_the_pretrained_models(unit):
    ctx, loaded = unit
    ctx.cfg["evaluate"]["zero_shot"] = {"max_examples": 2}
    assert EVALUATIONS["zero_shot"](ctx) == "2 pretrained models, 5 tasks"
    assert loaded == ["redllm-s", "decllm-s"]  # the pretrained runs, not the tuned ones
    res = json.loads((ctx.out / "zero_shot.json").read_text())
    assert res["kind"] == "lightning_redllm.study_zero_shot/1" and len(res["tasks"]) == 5
    for label, m in res["models"].items():
        assert (m["name"], m["size"], m["seed"]) == (label.split("-")[0], "s", None)
        losses = [v["loss"] for v in m["tasks"].values()]
        assert all(v["examples"] == 2 for v in m["tasks"].values())
        assert m["all_loss"] == pytest.approx(sum(losses) / len(losses)) and abs(m["all_loss"] - math.log(4096)) < 1.0
        assert 0 <= m["mc_accuracy"] <= 1
    (pair, acc) = res["over_seeds"]["paired"]  # one seed: a difference, no interval, no verdict either way
    assert (pair["metric"], pair["a"], pair["b"], pair["seeds"]) == ("all_loss", "redllm", "decllm", [None])
    assert pair["mean"] == pytest.approx(res["models"]["redllm-s"]["all_loss"] - res["models"]["decllm-s"]["all_loss"])
    assert pair["lo"] is None and pair["verdict"] == "not resolved" and acc["metric"] == "mc_accuracy"


def test_extrapolation_records_the_rise_per_model_and_pairs_it(unit, monkeypatch):
    from lightning_redllm.study.findings import study_findings

    ctx, loaded = unit
    ctx.cfg["evaluate"]["extrapolation"] = {"lengths": [32, 64, 128], "prefix_lengths": ["half", 1],
                                            "tokens_per_source": 256}
    monkeypatch.setattr(ctx, "train_length", lambda: 32)
    EVALUATIONS["extrapolation"](ctx)
    res = json.loads((ctx.out / "extrapolation.json").read_text())
    assert res["runs"] == {"redllm-s": {"name": "redllm", "size": "s", "seed": None},
                           "decllm-s": {"name": "decllm", "size": "s", "seed": None}}
    for label, by_prefix in res["rise"].items():
        loss = {(pt["prefix"], pt["length"]): pt["loss"] for pt in res["models"][label]["points"]}
        assert set(by_prefix) == {"p-half", "p1"}
        for prefix, spec in (("p-half", "half"), ("p1", 1)):
            assert by_prefix[prefix] == pytest.approx({"x2": loss[(spec, 64)] - loss[(spec, 32)],
                                                       "x4": loss[(spec, 128)] - loss[(spec, 32)]})
    pairs = res["over_seeds"]["paired"]
    assert [p["metric"] for p in pairs] == ["rise.p-half.x2", "rise.p-half.x4", "rise.p1.x2", "rise.p1.x4"]
    assert all(p["expected_sign"] == -1 for p in pairs)
    finding = {f["id"]: f for f in study_findings({"extrapolation": res})["findings"]}["extrapolation"]
    # the largest factor at the first configured prefix, at the largest size; every factor and prefix in the detail
    assert finding["measure"] == "RedLLM - DecLLM of loss(x4) - loss(train length), prefix half, size s"
    assert finding["estimate"]["mean"] == pytest.approx(res["rise"]["redllm-s"]["p-half"]["x4"]
                                                        - res["rise"]["decllm-s"]["p-half"]["x4"])
    assert finding["detail"].startswith("prefix half x2: ") and "prefix 1 x4: " in finding["detail"]
    assert finding["verdict"] == "not resolved"  # one seed


def test_scaling_fits_every_seed_and_the_exponent_difference(tmp_path):
    """Fake finished runs (checkpoint metadata + matched losses on known power laws with a seed scatter):
    every (size, seed) is a point, and b(RedLLM) - b(DecLLM) comes with its Welch interval."""
    from lightning_redllm.eval.scaling import PowerLawFit
    from lightning_redllm.eval.stats import slope_difference
    from lightning_redllm.study.plan import pretrain_runs

    sizes = {f"w{d}": {"d_model": d, "ffn_dim": 3 * d, "n_heads": d // 32, "head_dim": 32, "n_layers": 2,
                       "n_encoder_layers": 1, "n_decoder_layers": 1} for d in (32, 64, 96, 128)}
    text = (f"name: sc\nout_dir: {tmp_path / 'out'}\nseeds: [0, 1, 2]\nsizes: "
            + json.dumps({k: {"preset": "tiny", "overrides": v} for k, v in sizes.items()})
            + "\npretrain: {}\nevaluate: {perplexity: {}, scaling: {}}\n")
    (tmp_path / "s.yaml").write_text(text)
    cfg = load_study_config(tmp_path / "s.yaml")
    ctx = EvalContext.for_study(cfg, log=lambda m: None)
    ctx.out.mkdir(parents=True)
    b_true, scatter = {"redllm": 0.12, "decllm": 0.08}, [0.01, -0.012, 0.004]
    models = {}
    for i, run in enumerate(pretrain_runs(cfg)):
        mcfg = ModelConfig.from_name(f"{run.name}-tiny", **sizes[run.size.name])
        tokens = 2048 * 100 * (1 + list(sizes).index(run.size.name))
        run.ckpt.parent.mkdir(parents=True)
        torch.save({"model_config": mcfg.to_dict(), "datamodule_hyper_parameters": {"seq_len": 256},
                    "hyper_parameters": {}, "module_counters": {"tokens_seen": tokens}, "global_step": 1}, run.ckpt)
        from lightning_redllm.eval.scaling import run_point

        flops = run_point(run.ckpt)["flops"]
        loss = 60 * flops ** -b_true[run.name] * math.exp(scatter[run.seed])
        models[run.label] = {"matched_loss": {"all": loss}, "non_embedding_parameters": 1000 * (i + 1)}
    ctx.write("perplexity.json", {"models": models})
    EVALUATIONS["scaling"](ctx)
    res = json.loads((ctx.out / "scaling.json").read_text())
    assert len(res["points"]) == 24 and {p["seed"] for p in res["points"]} == {0, 1, 2}
    fams = res["families"]
    for fam in ("redllm", "decllm"):
        fit = fams[fam]["flops"]
        assert fit["n"] == 12 and fit["b_ci"][0] < b_true[fam] < fit["b_ci"][1]  # 10 dof: a usable interval
        assert fams[fam]["non_embedding_parameters"]["n"] == 12
    fits = [PowerLawFit(**{**fams[f]["flops"], "b_ci": tuple(fams[f]["flops"]["b_ci"]),
                           "a_ci": tuple(fams[f]["flops"]["a_ci"])}) for f in ("redllm", "decllm")]
    want = slope_difference(*fits).to_dict()
    assert res["difference"]["flops"] == pytest.approx(want)
    assert res["difference"]["flops"]["lo"] > 0  # 0.12 vs 0.08 with a 0.01 scatter: resolved
    assert set(res["difference"]) == {"flops", "parameters", "non_embedding_parameters"}
