"""The user's path through the real entry point (``python -m lightning_redllm``): resuming never
swaps the model or drops a change silently, a bad checkpoint or recipe is one line naming the file,
a run folder holds one run, export -> generate needs nothing else, predict writes its scores."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FAST = ["--trainer.val_check_interval", "100", "--data.init_args.seq_len", "64", "--data.init_args.batch_size", "2",
        "--data.init_args.num_workers", "0", "--data.init_args.val_batches", "2",
        "--trainer.enable_progress_bar", "false"]


def cli(args, cwd, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "LIGHTNING_REDLLM_TRACEBACK"}
    return subprocess.run([sys.executable, "-m", "lightning_redllm", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def error_lines(r) -> list[str]:
    """stderr lines that are not progress/info chatter: the error and its optional hint."""
    return [ln for ln in r.stderr.splitlines() if ln.startswith(("error:", "hint:", "Traceback"))
            or ln.startswith("python -m lightning_redllm")]


def one_error(r, *needles: str) -> str:
    assert r.returncode != 0, r.stdout[-2000:]
    lines = error_lines(r)
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert 1 <= len(lines) <= 2 and lines[0].startswith(("error:", "python -m")), r.stderr[-3000:]
    if len(lines) == 2:
        assert lines[1].startswith("hint:"), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished 4-step RedLLM run and DecLLM run (tiny, CPU), shared by the tests below."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for family, extra in (("redllm", []), ("decllm", ["--model", "DecLLMModule"])):
        r = cli(["fit", *extra, *FAST, "--trainer.max_steps", "4", "--trainer.default_root_dir", family], cwd=root)
        assert r.returncode == 0, r.stderr[-3000:]
        out[family] = root / family / "checkpoints" / "last.ckpt"
    return root, out


def test_resume_refuses_the_other_family(runs, tmp_path):
    _, ckpt = runs
    r = cli(["fit", *FAST, "--trainer.max_steps", "6", "--trainer.default_root_dir", str(tmp_path),
             "--ckpt_path", str(ckpt["decllm"])], cwd=tmp_path)
    one_error(r, str(ckpt["decllm"]), "decllm", "redllm")
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").glob("*.ckpt"))


def test_resume_refuses_another_optimizer_and_size(runs, tmp_path):
    _, ckpt = runs
    r = cli(["fit", *FAST, "--trainer.max_steps", "6", "--trainer.default_root_dir", str(tmp_path),
             "--model.init_args.optimizer", "adafactor", "--ckpt_path", str(ckpt["redllm"])], cwd=tmp_path)
    one_error(r, str(ckpt["redllm"]), "adamw", "adafactor")
    r = cli(["fit", *FAST, "--trainer.max_steps", "6", "--trainer.default_root_dir", str(tmp_path / "b"),
             "--model.init_args.overrides", "{d_model: 64, n_heads: 2, head_dim: 32}",
             "--ckpt_path", str(ckpt["redllm"])], cwd=tmp_path)
    one_error(r, str(ckpt["redllm"]), "d_model")


def test_resume_with_a_changed_lr_applies_it_and_says_so(runs, tmp_path):
    root, ckpt = runs
    # resume in the run's own folder (a copy, so the shared fixture stays as it was)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(ckpt["redllm"].read_bytes())
    r = cli(["fit", *FAST, "--trainer.max_steps", "6", "--trainer.default_root_dir", str(run),
             "--model.init_args.lr", "1e-3", "--ckpt_path", str(run / "checkpoints" / "last.ckpt")], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    note = [ln for ln in r.stderr.splitlines() if "changed hyperparameters" in ln]
    assert len(note) == 1 and "lr 0.003 -> 0.001" in note[0], r.stderr[-2000:]
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 6 and state["hyper_parameters"]["lr"] == 1e-3
    assert state["lr_schedulers"][0]["base_lrs"] == [1e-3, 1e-3]  # the new LR really drives the schedule
    assert state["optimizer_states"][0]["param_groups"][0]["initial_lr"] == 1e-3


def test_bad_checkpoints_are_one_line_naming_the_file(runs, tmp_path):
    _, ckpt = runs
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ckpt["redllm"].read_bytes()[:4000])
    r = cli(["fit", *FAST, "--trainer.max_steps", "6", "--ckpt_path", str(truncated)], cwd=tmp_path)
    one_error(r, str(truncated))
    r = cli(["fit", *FAST, "--ckpt_path", str(tmp_path / "missing.ckpt")], cwd=tmp_path)
    one_error(r, "missing.ckpt", "not found")
    st = tmp_path / "w.safetensors"
    e = cli(["export", "--ckpt", str(ckpt["redllm"]), "--out", str(st)], cwd=tmp_path)
    assert e.returncode == 0, e.stderr
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(st.read_bytes()[:2000])
    r = cli(["generate", "--ckpt", str(cut), "--prompt", "hi"], cwd=tmp_path)
    one_error(r, str(cut), "safetensors")
    r = cli(["fit", *FAST, "--trainer.max_steps", "2", "--trainer.default_root_dir", str(tmp_path / "i"),
             "--model.init_args.init_from", str(cut)], cwd=tmp_path)
    one_error(r, str(cut))


def test_a_run_folder_holds_one_run(runs, tmp_path):
    root, ckpt = runs
    before = {p.name: p.stat().st_mtime_ns for p in ckpt["redllm"].parent.glob("*.ckpt")}
    r = cli(["fit", *FAST, "--trainer.max_steps", "2", "--trainer.default_root_dir", "redllm"], cwd=root)
    one_error(r, str(ckpt["redllm"].parent), "already holds")
    assert "--ckpt_path" in r.stderr  # the hint says how to resume
    after = {p.name: p.stat().st_mtime_ns for p in ckpt["redllm"].parent.glob("*.ckpt")}
    assert after == before  # nothing written, no last-v1.ckpt


def test_export_then_generate_needs_no_tokenizer_flag(runs, tmp_path):
    _, ckpt = runs
    st = tmp_path / "model.safetensors"
    e = cli(["export", "--ckpt", str(ckpt["decllm"]), "--out", str(st)], cwd=tmp_path)
    assert e.returncode == 0, e.stderr
    assert oct(st.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    g = cli(["generate", "--ckpt", str(st), "--prompt", "In the beginning", "--max_new_tokens", "4", "--json"],
            cwd=tmp_path)
    assert g.returncode == 0, g.stderr[-2000:]
    assert json.loads(g.stdout.strip().splitlines()[-1])[0]["prompt"] == "In the beginning"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_predict_writes_and_prints_the_scores(runs, tmp_path):
    _, ckpt = runs
    r = cli(["predict", "--config", "recipes/quickstart.yaml", "--ckpt_path", str(ckpt["redllm"]),
             "--data.init_args.seq_len", "64", "--data.init_args.num_workers", "0",
             "--data.init_args.val_batches", "2", "--trainer.default_root_dir", str(tmp_path),
             "--trainer.enable_progress_bar", "false"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(ln) for ln in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert rows and [row["index"] for row in rows] == list(range(len(rows)))
    assert all(row["tokens"] == 32 and 0 < row["nll"] < 20 for row in rows)  # seq 64: 32 encoder + 32 targets
    summary = [ln for ln in r.stdout.splitlines() if ln.startswith("predict:")]
    assert len(summary) == 1 and f"{len(rows)} examples" in summary[0] and "predictions.jsonl" in summary[0]


@pytest.mark.parametrize("content, needles", [
    ("", ["empty"]),
    ("model:\n  init_args:\n    lr: [1, 2\n", ["bad.yaml:3:", "YAML syntax error"]),
    ("model:\n  init_args:\n    lrr: 0.1\n", ["bad.yaml:3", "model.init_args.lrr", "not an option"]),
    ("- a\n- b\n", ["bad.yaml", "mapping"]),
])
def test_recipe_errors_are_one_line_naming_file_and_key(content, needles, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    r = cli(["fit", "--config", "quickstart", "--config", str(bad)], cwd=tmp_path)
    line = one_error(r, *needles)
    assert "usage:" not in r.stderr and "__main__.py" not in r.stderr, r.stderr[:500]
    assert str(bad) in line


@pytest.mark.parametrize("args, needles", [
    (["--model.init_args.lrr", "3"], ["--model.init_args.lrr", "not an option", "RedLLMModule"]),
    (["--model.init_args.lr", "fast"], ["--model.init_args.lr", "float", "fast"]),
    (["--trainer.max_stepz", "3"], ["--trainer.max_stepz"]),
])
def test_flag_errors_are_one_line(args, needles, tmp_path):
    r = cli(["fit", *args], cwd=tmp_path)
    one_error(r, *needles)
    assert "usage:" not in r.stderr


def test_c_and_config_behave_the_same(tmp_path):
    """Any config replaces the embedded quickstart, whichever flag spells it."""
    mine = tmp_path / "mine.yaml"
    mine.write_text("trainer:\n  max_steps: 7\n")
    outs = []
    for flag in ("--config", "-c"):
        r = cli(["fit", flag, str(mine), "--print_config"], cwd=tmp_path)
        outs.append((r.returncode, r.stdout))
    assert outs[0] == outs[1]
    assert "quickstart" not in outs[0][1] and "max_steps: 7" in outs[0][1]


def test_strategy_config_flags_merge_key_by_key():
    """jsonargparse would replace the recipe's whole DeepSpeed dict with the flag's one key, as a string."""
    from lightning_redllm.cli import split_strategy_config_overrides

    rest, over = split_strategy_config_overrides(
        ["fit", "--trainer.strategy.init_args.config.zero_optimization.reduce_bucket_size", "4194304",
         "--trainer.max_steps", "2", "--trainer.strategy.init_args.config.zero_optimization.offload_optimizer={device: cpu}",
         "--trainer.strategy.init_args.config.bf16.enabled", "false"])
    assert rest == ["fit", "--trainer.max_steps", "2"]
    assert over == [(["zero_optimization", "reduce_bucket_size"], 4194304),
                    (["zero_optimization", "offload_optimizer"], {"device": "cpu"}), (["bf16", "enabled"], False)]


def test_strategy_config_flag_without_a_deepspeed_recipe_is_one_line(tmp_path):
    r = cli(["fit", "--trainer.strategy.init_args.config.zero_optimization.stage", "3", "--trainer.max_steps", "1"],
            cwd=tmp_path)
    one_error(r, "--trainer.strategy.init_args.config.zero_optimization.stage", "strategy/zero3")
