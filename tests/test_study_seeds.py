"""Issue 21 machinery: seeds as a study axis (per-seed runs, one seed per pair, paired tables), the token
budget and the learning-rate rule per size, the attention-output-norm ablation stages and their
divergence check, and the finding-by-finding verdicts. The cpu-study itself is planned here, never run."""
from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import pytest
import torch

from lightning_redllm.assets.recipes import RECIPES
from lightning_redllm.config import ModelConfig, non_embedding_parameters, num_parameters
from lightning_redllm.study import Study, StudyError, load_study_config, study_main
from lightning_redllm.study.evaluations import EVALUATIONS, EvalContext
from lightning_redllm.study.evaluations.ablations import divergence
from lightning_redllm.study.findings import format_findings, study_findings
from lightning_redllm.study.fit import FitRunner
from lightning_redllm.study.paired import over_seeds
from lightning_redllm.study.plan import ablation_runs, instruct_runs, plan_stages, pretrain_runs, size_budgets

XS = {"d_model": 32, "ffn_dim": 96, "n_heads": 1, "n_layers": 2, "n_encoder_layers": 1, "n_decoder_layers": 1}


def _load(tmp_path: Path, text: str) -> dict:
    path = tmp_path / "study.yaml"
    path.write_text(text.replace("OUT", str(tmp_path / "out")))
    return load_study_config(path)


# -- budget and learning rate ---------------------------------------------------------------------------

BUDGET = f"""
name: budget
out_dir: OUT
seeds: [0, 1]
sizes:
  a: {{preset: tiny, overrides: {json.dumps(XS)}}}
  b: {{preset: tiny, overrides: {json.dumps({**XS, "d_model": 64, "ffn_dim": 192, "n_heads": 2})}}}
pretrain:
  configs: [quickstart]          # 8 x 256 tokens per step, a checkpoint every 100 steps
  tokens_per_parameter: 10
  lr_rule: {{base_lr: 0.02, base_width: 32}}
"""


def test_non_embedding_parameters_by_hand():
    dec = ModelConfig.from_name("decllm-tiny", **XS)
    red = ModelConfig.from_name("redllm-tiny", **XS)
    # per block: attention 32 x (32 + 2 x 32) + 32 x 32, SwiGLU 3 x 32 x 96, two RMSNorm gains of 32
    block = 32 * 96 + 32 * 32 + 3 * 32 * 96 + 2 * 32
    assert non_embedding_parameters(dec) == 2 * block + 32 == 26784  # + the final norm
    # RedLLM: one encoder block, one decoder block with cross-attention (+ its norm), two final norms
    assert non_embedding_parameters(red) == block + (block + 32 * 96 + 32 * 32 + 32) + 2 * 32 == 30944
    assert num_parameters(dec) - non_embedding_parameters(dec) == 4096 * 32  # the tied embedding


def test_token_budget_and_lr_rule_give_the_documented_values(tmp_path):
    cfg = _load(tmp_path, BUDGET)
    assert cfg["_recipe"]["tokens_per_step"] == 8 * 256 and cfg["_recipe"]["checkpoint_every"] == 100
    budgets = size_budgets(cfg)
    a, b = budgets["a"], budgets["b"]
    assert a.non_embedding == {"redllm": 30944, "decllm": 26784}
    # tokens = 10 x (30944 + 26784) / 2 = 288,640 -> 141 steps of 2,048 -> rounded up to 200
    assert (a.tokens, a.max_steps, a.lr) == (288640, 200, 0.02)
    # b: 10 x mean(123,328; 106,816) = 1,150,720 tokens -> 562 steps -> 600; lr 0.02 x 32 / 64
    assert b.non_embedding == {"redllm": 123328, "decllm": 106816}
    assert (b.tokens, b.max_steps, b.lr) == (1150720, 600, 0.01)
    cfg["pretrain"]["lr_rule"]["exponent"] = 0.5
    assert size_budgets(cfg)["b"].lr == float(f"{0.02 / math.sqrt(2):.4g}") == 0.01414
    # the fit command carries them, after the stage's args; both families of a size the same steps
    fit = FitRunner(cfg)
    for fam in ("redllm", "decllm"):
        words = fit.pretrain_args(fam, cfg["_sizes"][1], seed=1)[2]
        assert words[words.index("--trainer.max_steps") + 1] == "600"
        assert words[words.index("--model.init_args.lr") + 1] == "0.01414"
        assert words[-4:] == ["--seed_everything", "1", "--data.init_args.seed", "1"]


@pytest.mark.parametrize("patch, match", [
    ("seeds: [0, 0]", "seeds has repeats"),
    ("seeds: [a]", "seeds must be a non-empty list of integers"),
    ("pretrain: {configs: [quickstart], tokens_per_parameter: 4, args: {trainer.max_steps: 9}}",
     "pretrain.args sets trainer.max_steps, which tokens_per_parameter decides"),
    ("pretrain: {configs: [quickstart], lr_rule: {base_lr: 0.01, base_width: 32, exponent: 1}, args: [--model.init_args.lr, 3]}",
     "pretrain.args sets model.init_args.lr, which lr_rule decides"),
    ("pretrain: {configs: [quickstart], args: {seed_everything: 3}}", "pretrain.args sets seed_everything, which seeds"),
    ("pretrain: {lr_rule: {base_lr: 0.01, base_wdth: 32}}", r"pretrain.lr_rule: unknown key\(s\) \['base_wdth'\]"),
    ("pretrain: {lr_rule: {base_lr: -1, base_width: 32}}", "pretrain.lr_rule.base_lr must be a number > 0"),
    ("pretrain: {tokens_per_parameter: 0}", "tokens_per_parameter must be a number > 0"),
    ("pretrain: {configs: ['{trainer: {max_steps: 3}}'], tokens_per_parameter: 4}",
     "needs an integer data.init_args.batch_size"),
    ("ablations: {attn_out_norm: {size: q}}", "ablations.attn_out_norm.size: unknown size 'q'"),
    ("ablations: {attn_norm: {}}", r"ablations: unknown key\(s\) \['attn_norm'\]"),
    ("instruct: {variants: [redllm], sizes: [q]}", r"instruct.sizes: unknown size\(s\) \['q'\]"),
])
def test_study_file_errors_name_the_key(tmp_path, patch, match):
    base = f"name: e\nout_dir: OUT\nseeds: [0, 1]\nsizes: {{a: {{preset: tiny, overrides: {json.dumps(XS)}}}}}\n"
    key = patch.split(":", 1)[0]
    text = base.replace("seeds: [0, 1]\n", "") if key == "seeds" else base
    text += patch + "\n" + ("pretrain: {}\n" if key != "pretrain" else "")
    with pytest.raises(StudyError, match=match):
        _load(tmp_path, text)


# -- the cpu-study plan ----------------------------------------------------------------------------------

#: the documented budget of recipes/study/cpu-study.yaml (docs/study.md): size -> (d_model, max_steps, lr)
CPU_STUDY_BUDGETS = {"xs": (32, 100, 0.03), "s": (64, 300, 0.015), "m": (96, 600, 0.01), "l": (128, 900, 0.0075)}


def test_cpu_study_plan(tmp_path, capsys):
    cfg = load_study_config(RECIPES / "study/cpu-study.yaml")
    cfg["runs_dir"] = str(tmp_path / "runs")
    assert cfg["seeds"] == [0, 1, 2] and [s.name for s in cfg["_sizes"]] == ["xs", "s", "m", "l"]
    budgets = size_budgets(cfg)
    assert {k: (b.d_model, b.max_steps, b.lr) for k, b in budgets.items()} == CPU_STUDY_BUDGETS
    for fam in ("redllm", "decllm"):
        n = [b.non_embedding[fam] for b in budgets.values()]
        assert n == sorted(n) and n[-1] / n[0] >= 8, n  # >= 8x in non-embedding parameters, per family
    for b in budgets.values():  # 4 tokens per (mean) non-embedding parameter, in whole checkpoint intervals
        assert b.tokens == math.ceil(4 * sum(b.non_embedding.values()) / 2)
        assert b.max_steps % 100 == 0 and 0 <= b.max_steps * 2048 - b.tokens < 100 * 2048
    names = [s.name for s in plan_stages(cfg)]
    assert len(names) == 24 + 6 + 1 + 9 + 8
    assert names[:2] == ["pretrain/redllm-xs-seed0", "pretrain/decllm-xs-seed0"] and names[23] == "pretrain/decllm-l-seed2"
    assert names[24:30] == [f"ablation/{arm}-l-seed{k}" for k in range(3) for arm in ("redllm_out_norm", "redllm_no_out_norm")]
    assert names[30:] == ["instruct/data"] + [f"instruct/{v}-l-seed{k}" for k in range(3)
                                              for v in ("redllm", "decllm", "decllm_biattn")] + [
        "eval/perplexity", "eval/zero_shot", "eval/extrapolation", "eval/instruct", "eval/ablations",
        "eval/quality_flops", "scaling", "report"]
    # --dry_run lists the stages and the budget table, and runs nothing
    assert study_main(["--config", "study/cpu-study", "--runs_dir", str(tmp_path / "runs"),
                       "--out_dir", str(tmp_path / "out"), "--dry_run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in out[:48]] == names
    assert out[-4].split() == ["xs", "32", "redllm", "0.031M,", "decllm", "0.027M", "115456", "100", "0.03"]
    assert out[-1].split()[-2:] == ["900", "0.0075"]
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_cpu_mini_keeps_its_stage_names():
    cfg = load_study_config(RECIPES / "study/cpu-mini.yaml")
    assert cfg["seeds"] is None and size_budgets(cfg)["l"].max_steps is None
    sizes = ("s", "m", "l")
    assert [s.name for s in plan_stages(cfg)] == (
        [f"pretrain/{f}-{s}" for s in sizes for f in ("redllm", "decllm")] + ["instruct/data"]
        + [f"instruct/{v}-{s}" for s in sizes for v in ("redllm", "decllm", "decllm_biattn")]
        + ["eval/perplexity", "eval/extrapolation", "eval/efficiency", "eval/instruct", "eval/lm_eval",
           "eval/quality_flops", "scaling", "report"])
    assert pretrain_runs(cfg)[0].root.name == "redllm-s" and "--seed_everything" not in \
        FitRunner(cfg).pretrain_args("redllm", cfg["_sizes"][0])[2]


def test_cpu_study_commands_share_the_seed_and_parse(tmp_path):
    """A pair's commands carry one seed; tuning starts from the same seed's model; the ablation's flags win over
    the LR rule's (later flags override) and instantiate: Adafactor at 0.01, no attention-output norm."""
    from lightning_redllm.cli.lightning_cli import RedLLMCLI, resolve_config_args

    cfg = load_study_config(RECIPES / "study/cpu-study.yaml")
    cfg["runs_dir"] = str(tmp_path / "runs")
    study = Study(cfg, log=lambda m: None)
    l = cfg["_sizes"][-1]
    red, dec = (study.pretrain_args(f, l, 2)[2] for f in ("redllm", "decllm"))
    for words in (red, dec):
        assert words[words.index("--seed_everything") + 1] == "2" and words[words.index("--data.init_args.seed") + 1] == "2"
    assert [r.seed for r in instruct_runs(cfg)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    tuned = study.instruct_args("decllm_biattn", l, 1)[2]
    assert tuned[tuned.index("--model.init_args.init_from") + 1].endswith("pretrain/decllm-l-seed1/checkpoints/last.ckpt")
    assert tuned[tuned.index("--seed_everything") + 1] == "1"
    runs = ablation_runs(cfg)
    assert {r.name for r in runs} == {"redllm_out_norm", "redllm_no_out_norm"} and {r.size.name for r in runs} == {"l"}
    root, configs, extra = study.ablation_args("redllm_no_out_norm", l, 0)
    assert root == tmp_path / "runs" / "ablation" / "redllm_no_out_norm-l-seed0"
    assert json.loads(extra[extra.index("--model.init_args.overrides") + 1])["attn_out_norm"] is False
    assert extra.count("--model.init_args.lr") == 2 and extra[-1] == "0.0"  # rule's lr, then the ablation's
    args = resolve_config_args([w for c in configs for w in ("--config", c)] + extra)
    cli = RedLLMCLI(args=[*args, "--trainer.default_root_dir", str(tmp_path / "x"), "--trainer.logger", "false"],
                    run=False)
    assert cli.model.hparams.lr == 0.01 and cli.model.hparams.optimizer == "adafactor"
    assert cli.model.config.attn_out_norm is False and cli.model.config.d_model == 128
    assert cli.trainer.max_steps == 900 and cli.datamodule.seed == 0 and cli.config["seed_everything"] == 0


# -- the ablation: divergence -------------------------------------------------------------------------------

def test_divergence_check_on_synthetic_curves():
    smooth = {s: 8.0 - 3.0 * (1 - math.exp(-s / 200)) for s in range(10, 901, 10)}
    ok = divergence(smooth)
    assert not ok["diverged"] and ok["reasons"] == [] and ok["start"] == smooth[10] and ok["max_rise"] == 0.0
    spike = {**smooth, 400: smooth[400] + 1.5}  # one spike that recovers: recorded, not a divergence
    assert not divergence(spike)["diverged"]
    assert divergence(spike)["max_rise"] == pytest.approx(smooth[400] + 1.5 - smooth[390])  # above the running min
    blown = {**smooth, **{s: smooth[300] + 0.01 * (s - 300) for s in range(310, 901, 10)}}  # ends above the start
    d = divergence(blown)
    assert d["diverged"] and d["reasons"] == [f"ends above its start ({d['end']:.3f} > {d['start']:.3f})"]
    assert divergence({**smooth, 500: float("nan")})["reasons"] == ["non-finite training loss logged"]
    assert divergence(smooth, skipped_steps=2)["reasons"] == ["2 skipped step(s)"]
    assert divergence({10: 7.0, 20: 6.5}, stopped_nonfinite=True)["reasons"] == ["stopped by the non-finite-loss guard"]
    assert not divergence({})["diverged"]


def _fake_python(tmp_path: Path, script: str) -> str:
    exe = tmp_path / "fakepy"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(0o755)
    return str(exe)


def test_ablation_stage_records_a_divergence_instead_of_failing(tmp_path):
    cfg = load_study_config(RECIPES / "study/cpu-study.yaml")
    cfg["runs_dir"] = str(tmp_path / "runs")
    run = ablation_runs(cfg)[1]
    assert run.label == "redllm_no_out_norm-l-seed0"
    # the fit's non-finite guard: saves nonfinite-step<N>.ckpt in the run folder, then exits 1
    fit = FitRunner(cfg, python=_fake_python(tmp_path, f'touch "{run.root}/nonfinite-step17.ckpt"\nexit 1\n'))
    assert fit.ablation(run) == "stopped: non-finite loss at step 17"
    assert json.loads((run.root / "outcome.json").read_text()) == {"stopped_nonfinite": True, "step": 17, "returncode": 1}
    # any other failure is still an error, and a pretraining run never treats the guard as an outcome
    other = ablation_runs(cfg)[3]
    with pytest.raises(StudyError, match="failed \\(exit 2\\)"):
        FitRunner(cfg, python=_fake_python(tmp_path, "exit 2\n")).ablation(other)
    pre = pretrain_runs(cfg)[0]
    with pytest.raises(StudyError, match="failed \\(exit 1\\)"):
        FitRunner(cfg, python=_fake_python(tmp_path, f'mkdir -p "{pre.root}"; touch "{pre.root}/nonfinite-step3.ckpt"\n'
                                                     "exit 1\n")).pretrain(pre)


def _metrics(root: Path, train: dict, val: dict) -> None:
    d = root / "logs" / "version_0"
    d.mkdir(parents=True)
    rows = ["step,train/loss,val/loss"] + [f"{s - 1},{v}," for s, v in train.items()] + \
        [f"{s - 1},,{v}" for s, v in val.items()]
    (d / "metrics.csv").write_text("\n".join(rows) + "\n")


def test_ablations_evaluation_pairs_the_arms_per_seed(tmp_path):
    cfg = load_study_config(RECIPES / "study/cpu-study.yaml")
    cfg["out_dir"], cfg["runs_dir"] = str(tmp_path / "out"), str(tmp_path / "runs")
    finals = {0: (4.60, 4.90), 1: (4.62, 4.85), 2: (4.58, 4.95)}  # (with, without) the norm
    for run in ablation_runs(cfg):
        with_norm = run.name == "redllm_out_norm"
        end = finals[run.seed][0 if with_norm else 1]
        train = {s: 8.0 - (8.0 - end) * s / 900 for s in range(10, 901, 10)}
        if not with_norm and run.seed == 2:
            train[450] = float("inf")  # one run blew up
        _metrics(run.root, train, {900: end})
        (run.root / "outcome.json").write_text(json.dumps({"stopped_nonfinite": False, "returncode": 0}))
    ctx = EvalContext.for_study(cfg, log=lambda m: None)
    ctx.out.mkdir(parents=True)
    assert EVALUATIONS["ablations"](ctx) == "attn_out_norm: diverged 1/3 without, 0/3 with the norm"
    res = json.loads((ctx.out / "ablations.json").read_text())["attn_out_norm"]
    assert res["diverged"] == {"redllm_out_norm": 0, "redllm_no_out_norm": 1} and res["size"] == "l"
    assert res["runs"]["redllm_no_out_norm-l-seed2"]["reasons"] == ["non-finite training loss logged"]
    (pair,) = res["over_seeds"]["paired"]
    assert (pair["a"], pair["b"], pair["seeds"]) == ("redllm_no_out_norm", "redllm_out_norm", [0, 1, 2])
    assert pair["differences"] == pytest.approx([0.30, 0.23, 0.37]) and pair["verdict"] == "reproduced"
    assert (ctx.out / "ablation_attn_out_norm.png").exists()
    finding = study_findings({"ablations": json.loads((ctx.out / "ablations.json").read_text())})["findings"][-1]
    assert finding["id"] == "attn_out_norm" and finding["verdict"] == "reproduced"
    assert finding["detail"] == "diverged: 1/3 seeds without the norm, 0/3 with it"


# -- findings --------------------------------------------------------------------------------------------------

def _entries(name_a: str, name_b: str, metric: str, a: list, b: list, size: str = "l") -> dict:
    out = {}
    for name, vals in ((name_a, a), (name_b, b)):
        for seed, v in enumerate(vals):
            out[f"{name}-{size}-seed{seed}"] = {"name": name, "size": size, "seed": seed, metric: v}
    return out


def test_verdicts_flow_into_the_findings_table():
    from lightning_redllm.study.evaluations.instruct import PAIRS as INSTRUCT_PAIRS
    from lightning_redllm.study.evaluations.zero_shot import PAIRS as ZERO_SHOT_PAIRS

    base = [7.0, 7.3, 6.8]  # a shared seed effect that pairing cancels
    # unseen tasks after tuning: RedLLM lower by 0.25 +- 0.05 (the study's direction): reproduced
    # BiAttn: higher by 0.25 +- 0.05 (against it): opposite
    tuned = {**_entries("redllm", "decllm", "held_out_loss", [x - d for x, d in zip(base, (0.30, 0.20, 0.25))], base),
             **_entries("decllm_biattn", "decllm", "held_out_loss", [x + d for x, d in zip(base, (0.30, 0.20, 0.25))],
                        base)}
    instruct = {"over_seeds": over_seeds(tuned, {"held_out_loss": "x"}, INSTRUCT_PAIRS)}
    # zero-shot: differences 0.1, -0.1, 0.05: the interval holds zero
    zs = {"over_seeds": over_seeds(_entries("redllm", "decllm", "all_loss", [x + d for x, d in zip(base, (0.1, -0.1, 0.05))],
                                            base), {"all_loss": "x"}, ZERO_SHOT_PAIRS)}
    # scaling: per seed, loss = a C^-b with RedLLM 0.05 nats above DecLLM at every compute
    points = [{"family": f, "seed": k, "flops": c, "loss": 40 * c ** -0.1 + (0.05 if f == "redllm" else 0) + 0.01 * k}
              for f in ("redllm", "decllm") for k in range(3) for c in (1e12, 4e12, 1.6e13, 6.4e13)]
    found = study_findings({"instruct": instruct, "zero_shot": zs, "scaling": {"points": points, "families": {}}})
    by = {f["id"]: f for f in found["findings"]}
    assert [f["id"] for f in found["findings"]] == ["loss_per_flop", "scaling_b", "scaling_b_difference", "zero_shot",
                                                    "extrapolation", "unseen_after_tuning", "biattn", "attn_out_norm"]
    assert by["unseen_after_tuning"]["verdict"] == "reproduced" and by["biattn"]["verdict"] == "opposite"
    assert by["unseen_after_tuning"]["estimate"]["mean"] == pytest.approx(-0.25)
    assert by["zero_shot"]["verdict"] == "not resolved" and by["zero_shot"]["estimate"]["lo"] < 0 < by["zero_shot"]["estimate"]["hi"]
    assert by["loss_per_flop"]["estimate"]["mean"] == pytest.approx(0.05, abs=1e-3)
    assert by["loss_per_flop"]["verdict"] == "reproduced"  # DecLLM lower at equal FLOPs, in every seed
    for fid in ("extrapolation", "attn_out_norm", "scaling_b", "scaling_b_difference"):
        assert by[fid]["verdict"] == "no data" and by[fid]["estimate"] is None
    table = format_findings(found).splitlines()
    assert len(table) == 2 + 8 and table[6].startswith("| 5 | RedLLM extrapolates") and table[6].endswith("| **no data** |")
    assert "**-0.250 [" in table[7] and table[7].endswith("| **reproduced** |") and table[8].endswith("| **opposite** |")
    # one seed: a number, no interval, not resolved
    one = study_findings({"instruct": {"over_seeds": over_seeds(
        {k: v for k, v in tuned.items() if k.endswith("seed0")}, {"held_out_loss": "x"}, INSTRUCT_PAIRS)}})
    f1 = {f["id"]: f for f in one["findings"]}["unseen_after_tuning"]
    assert f1["verdict"] == "not resolved" and f1["detail"].endswith("1 seed(s): no interval")


# -- a 2-seed tiny study, for real -------------------------------------------------------------------------------

TWO_SEEDS = f"""
name: two-seeds
out_dir: OUT
seeds: [0, 1]
families: [redllm, decllm]
sizes:
  xs: {{preset: tiny, overrides: {json.dumps({**XS, "ffn_dim": 64})}}}
pretrain:
  configs: [quickstart]
  args: {{trainer.max_steps: 2, trainer.val_check_interval: 2, trainer.log_every_n_steps: 1,
          data.init_args.val_batches: 1, data.init_args.num_workers: 0, data.init_args.batch_size: 2}}
evaluate:
  perplexity: {{max_sequences: 2}}
"""


@pytest.mark.slow
def test_two_seed_tiny_study_runs_per_seed_and_pairs(tmp_path):
    cfg = _load(tmp_path, TWO_SEEDS)
    out = Path(cfg["out_dir"])
    assert Study(cfg, log=lambda m: None).run() == 0
    labels = ["redllm-xs-seed0", "decllm-xs-seed0", "redllm-xs-seed1", "decllm-xs-seed1"]
    assert [r.label for r in pretrain_runs(cfg)] == labels
    for label in labels:
        root = out / "runs" / "pretrain" / label
        assert (root / "checkpoints" / "last.ckpt").exists()
        words = shlex.split((root / "command.txt").read_text())
        seed = label[-1]
        assert words[words.index("--seed_everything") + 1] == seed == words[words.index("--data.init_args.seed") + 1]
        assert torch.load(root / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    ppl = json.loads((out / "perplexity.json").read_text())
    loss = {k: m["matched_loss"]["all"] for k, m in ppl["models"].items()}
    assert set(loss) == set(labels) and loss["redllm-xs-seed0"] != loss["redllm-xs-seed1"]  # the seed matters
    block = ppl["over_seeds"]["metrics"]["matched_loss.all"]
    groups = {(g["name"], g["size"]): g for g in block["groups"]}
    assert set(groups) == {("redllm", "xs"), ("decllm", "xs")}
    red = groups[("redllm", "xs")]
    assert red["seeds"] == [0, 1] and red["n"] == 2 and red["values"] == [loss["redllm-xs-seed0"], loss["redllm-xs-seed1"]]
    assert red["mean"] == pytest.approx(sum(red["values"]) / 2) and red["lo"] < red["mean"] < red["hi"]
    (pair,) = ppl["over_seeds"]["paired"]
    assert (pair["a"], pair["b"], pair["size"], pair["seeds"]) == ("redllm", "decllm", "xs", [0, 1])
    assert pair["differences"] == pytest.approx([loss[f"redllm-xs-seed{k}"] - loss[f"decllm-xs-seed{k}"] for k in (0, 1)])
    assert pair["lo"] is not None and pair["verdict"] is None  # equal size: no study direction, no verdict
    report = (out / "report.md").read_text()
    assert "Over seeds (mean [95% t-interval]):" in report and "| matched_loss.all | xs | redllm - decllm | 0, 1 |" in report
    assert "## The study's findings, one by one" in report
    findings = {f["id"]: f for f in json.loads((out / "findings.json").read_text())["findings"]}
    assert findings["unseen_after_tuning"]["verdict"] == "no data" and findings["loss_per_flop"]["verdict"] == "no data"
