"""The study driver: resumes after being killed between stages (completed stages are not redone),
its shipped configs load, and `report` turns a folder into markdown that references its PNGs."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_redllm.assets.recipes import RECIPES
from lightning_redllm.study import Study, StudyError, load_study_config
from test_extrapolation import assert_valid_png

MICRO = """
name: micro
out_dir: {out}
families: [redllm]
sizes:
  xs: {{preset: tiny, overrides: {{d_model: 32, ffn_dim: 64, n_heads: 1, n_encoder_layers: 1, n_decoder_layers: 1}}}}
pretrain:
  configs: [quickstart]
  args: {{trainer.max_steps: 3, trainer.val_check_interval: 3, data.init_args.val_batches: 1,
          data.init_args.num_workers: 0}}
evaluate:
  perplexity: {{max_sequences: 2}}
  extrapolation: {{lengths: [128, 512], prefix_lengths: [1, half], tokens_per_source: 1024}}
  efficiency: {{presets: [study], batch_sizes: [1], prompt_len: 8, new_tokens: 2, repeats: 1}}
  quality_flops: {{prompt_len: 16, new_tokens: 4}}
  scaling: {{}}
"""


def _study(cfg_path: Path, env_extra: dict) -> subprocess.CompletedProcess:
    env = dict(os.environ, **env_extra)
    return subprocess.run([sys.executable, "-m", "lightning_redllm", "study", "--config", str(cfg_path)],
                          capture_output=True, text=True, env=env, timeout=600)


def test_study_resumes_after_a_kill_between_stages(tmp_path):
    out = tmp_path / "study"
    cfg = tmp_path / "micro.yaml"
    cfg.write_text(MICRO.format(out=out))
    # killed (SIGKILL, as by the OOM killer or a preemption) right after the first stage was recorded
    first = _study(cfg, {"LIGHTNING_REDLLM_STUDY_KILL_AFTER": "pretrain/redllm-xs"})
    assert first.returncode == -9, first.stdout[-2000:] + first.stderr[-2000:]
    marker = out / ".study" / "pretrain__redllm-xs.json"
    ckpt = out / "runs" / "pretrain" / "redllm-xs" / "checkpoints" / "last.ckpt"
    assert marker.exists() and ckpt.exists()
    assert not (out / ".study" / "eval__perplexity.json").exists() and not (out / "report.md").exists()
    assert not list((out / ".study").glob(".*tmp*"))  # markers are renamed into place, never half-written
    before = (marker.stat().st_mtime_ns, ckpt.stat().st_mtime_ns, (out / "runs/pretrain/redllm-xs/fit.log").read_text())

    second = _study(cfg, {})
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert re.search(r"pretrain/redllm-xs: done before .* skipped", second.stdout)
    assert "pretrain/redllm-xs: running" not in second.stdout
    after = (marker.stat().st_mtime_ns, ckpt.stat().st_mtime_ns, (out / "runs/pretrain/redllm-xs/fit.log").read_text())
    assert after == before  # the training run was not redone (no new fit, no new checkpoint)
    for stage in ("eval/perplexity", "eval/extrapolation", "eval/efficiency", "eval/quality_flops", "scaling", "report"):
        assert f"{stage}: done in" in second.stdout

    report = (out / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", report)
    assert {"extrapolation_p1.png", "extrapolation_p-half.png", "efficiency_throughput.png", "scaling.png",
            "quality_vs_flops_pretrained.png"} <= {Path(p).name for p in linked}
    for p in linked:
        assert_valid_png(out / p)
    ppl = json.loads((out / "perplexity.json").read_text())
    assert set(ppl["models"]) == {"redllm-xs"}
    # a third run has nothing left to do
    third = _study(cfg, {})
    assert third.returncode == 0 and "running" not in third.stdout.replace("resuming", "")


def test_report_command_on_a_folder(tmp_path):
    from lightning_redllm.__main__ import main
    from lightning_redllm.eval.plots import plot_scaling
    from lightning_redllm.eval.scaling import scaling_fits

    pts = [{"family": "redllm", "parameters": n, "flops": 6e9 * n, "loss": 50 * (6e9 * n) ** -0.2}
           for n in (1e6, 2e6, 4e6)]
    res = scaling_fits(pts)
    sub = tmp_path / "fits"
    sub.mkdir()
    (sub / "scaling.json").write_text(json.dumps(res))
    plot_scaling(res, sub)
    (tmp_path / "lm.json").write_text(json.dumps({"results": {"task_x": {"acc,none": 0.5, "acc_stderr,none": 0.1}}}))
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "page.md")]) == 0
    page = (tmp_path / "page.md").read_text()
    assert "](fits/scaling.png)" in page and "## Scaling fits" in page and "| task_x | acc | 0.500 |" in page
    assert "0.200" in page  # the fitted exponent
    assert main(["report", str(tmp_path / "missing")]) == 1  # one-line error, exit 1


def test_shipped_study_configs_load_and_plan():
    for name in ("study/cpu-mini.yaml", "study/gpu-150m.yaml"):
        cfg = load_study_config(RECIPES / name)
        stages = [s for s, _ in Study(cfg, log=lambda m: None).stages]
        assert stages[0].startswith("pretrain/") and stages[-1] == "report"
        assert "scaling" in stages and "eval/extrapolation" in stages and "eval/lm_eval" in stages
    mini = load_study_config(RECIPES / "study/cpu-mini.yaml")
    assert len(mini["_sizes"]) == 3 and set(mini["instruct"]["variants"]) == {"redllm", "decllm", "decllm_biattn"}
    assert mini["instruct"]["held_out_tasks"]


def test_study_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nout_dir: o\nsizes: {s: {preset: tiny}}\npretrain: {}\nevalute: {}\n")
    with pytest.raises(StudyError, match="evalute"):
        load_study_config(bad)
    bad.write_text("name: x\nout_dir: o\nsizes: {s: {preset: tiny, overrides: {d_modle: 3}}}\npretrain: {}\n")
    with pytest.raises(StudyError, match="d_modle"):
        load_study_config(bad)
    bad.write_text("name: x\nout_dir: o\nsizes: {s: {}}\npretrain: {}\ninstruct: {variants: [t5]}\n")
    with pytest.raises(StudyError, match="t5"):
        load_study_config(bad)


@pytest.mark.parametrize("kind", ["pretrain", "instruct"])
def test_gpu_config_fit_commands_parse(kind, tmp_path):
    """The GPU study's training commands compose and instantiate (nothing is trained or loaded)."""
    from lightning_redllm.cli.lightning_cli import RedLLMCLI, resolve_config_args

    cfg = load_study_config(RECIPES / "study/gpu-150m.yaml")
    study = Study(cfg, log=lambda m: None)
    size = cfg["_sizes"][0]
    root, configs, extra = (study.pretrain_args("redllm", size) if kind == "pretrain"
                            else study.instruct_args("decllm_biattn", size))
    args = resolve_config_args([w for c in configs for w in ("--config", c)] + extra)
    cli = RedLLMCLI(args=[*args, "--trainer.default_root_dir", str(tmp_path), "--trainer.accelerator", "cpu",
                          "--trainer.precision", "32-true", "--trainer.logger", "false"], run=False)
    assert cli.model.config.name.endswith("-150m") and cli.model.config.d_model == 1024
    if kind == "pretrain":
        assert cli.model.config.family == "redllm" and cli.model.hparams.optimizer == "adafactor"
        assert cli.datamodule.seq_len == 2048 and cli.trainer.max_steps == 20000
    else:
        assert cli.model.config.family == "decllm" and cli.model.bidirectional_prefix
        assert cli.model.config.dropout == 0.05 and cli.model.hparams.init_from.endswith("decllm-150m/checkpoints/last.ckpt")
