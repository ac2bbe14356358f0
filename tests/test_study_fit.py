"""The study's fit runner: the `fit` command line of pretraining and instruction-tuning runs, running
it (here a fake interpreter that only echoes), resuming from last.ckpt, and the final-step check."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch

from lightning_redllm.study import StudyError, load_study_config
from lightning_redllm.study.fit import FitRunner
from lightning_redllm.study.plan import instruct_runs, pretrain_runs

CONFIG = """
name: fitted
out_dir: OUT
families: [redllm, decllm]
sizes: {s: {preset: tiny, overrides: {d_model: 32}}}
pretrain:
  configs: [quickstart]
  model_overrides: {dropout: 0.0}
  args: {trainer.max_steps: 4, trainer.enable_progress_bar: false, data.init_args.extra: {a: 1}, x.y: null}
instruct:
  configs: [quickstart, quickstart-instruct]
  variants: [redllm, decllm_biattn]
  args: [--trainer.max_steps, 2]
"""


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(CONFIG.replace("OUT", str(tmp_path / "out")))
    return load_study_config(path)


def test_pretrain_and_instruct_command_lines(cfg, tmp_path):
    fit = FitRunner(cfg)
    runs = tmp_path / "out" / "runs"
    size = cfg["_sizes"][0]
    root, configs, extra = fit.pretrain_args("decllm", size)
    assert root == runs / "pretrain" / "decllm-s" and configs == ["quickstart"]
    # stage recipes, then the model recipe (it sets the class), the overrides, then the stage's dotted flags
    assert extra == ["--config", "model/decllm-tiny", "--model.init_args.overrides", '{"d_model": 32, "dropout": 0.0}',
                     "--trainer.max_steps", "4", "--trainer.enable_progress_bar", "false",
                     "--data.init_args.extra", '{"a": 1}', "--x.y", "null"]
    root, configs, extra = fit.instruct_args("decllm_biattn", size)
    assert root == runs / "instruct" / "decllm_biattn-s" and configs == ["quickstart", "quickstart-instruct"]
    assert extra == ["--config", "model/decllm-tiny", "--model.init_args.overrides", '{"d_model": 32}',
                     "--model.init_args.init_from", str(runs / "pretrain" / "decllm-s" / "checkpoints" / "last.ckpt"),
                     "--data.init_args.train_shards", str(runs / "data" / "instruct-train"),
                     "--data.init_args.val_shards", str(runs / "data" / "instruct-val"),
                     "--model.init_args.bidirectional_prefix", "true", "--trainer.max_steps", "2"]
    assert "--model.init_args.bidirectional_prefix" not in fit.instruct_args("redllm", size)[2]
    assert FitRunner.fit_args(root, ["a", "b"], ["--x", "1"], resume=False) == [
        "fit", "--config", "a", "--config", "b", "--x", "1", "--trainer.default_root_dir", str(root)]
    assert FitRunner.fit_args(root, [], [], resume=True)[-2:] == ["--ckpt_path", "last"]


def _fake_python(tmp_path: Path) -> str:
    """Echoes its arguments and exits with $FAKE_EXIT: the runner's side of a fit, without training."""
    exe = tmp_path / "fakepy"
    exe.write_text('#!/bin/sh\necho "fake fit $*"\nexit "${FAKE_EXIT:-0}"\n')
    exe.chmod(0o755)
    return str(exe)


def _ckpt(root: Path, step: int) -> None:
    (root / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step}, root / "checkpoints" / "last.ckpt")


def test_fit_runs_the_command_resumes_and_checks_the_final_step(cfg, tmp_path, monkeypatch):
    python, log = _fake_python(tmp_path), []
    fit = FitRunner(cfg, python=python, log=log.append)
    run = pretrain_runs(cfg)[0]
    monkeypatch.setenv("FAKE_EXIT", "3")
    with pytest.raises(StudyError, match=r"fit into .*redllm-s failed \(exit 3\); see .*fit.log:\n  fake fit -m lightning_redllm fit"):
        fit.pretrain(run)
    words = shlex.split((run.root / "command.txt").read_text())
    assert words[:4] == [python, "-m", "lightning_redllm", "fit"] and "--ckpt_path" not in words
    assert words[-2:] == ["--trainer.default_root_dir", str(run.root)]

    monkeypatch.setenv("FAKE_EXIT", "0")
    with pytest.raises(StudyError, match="wrote no checkpoints/last.ckpt"):
        fit.pretrain(run)
    _ckpt(run.root, 3)  # a periodic save, not the end of training
    with pytest.raises(StudyError, match=r"holds step 3, not the final step 4: .*multiple of N"):
        fit.pretrain(run)
    assert log[-1] == f"  resuming {run.root} from its last.ckpt"
    assert shlex.split((run.root / "command.txt").read_text())[-2:] == ["--ckpt_path", "last"]
    _ckpt(run.root, 4)
    assert fit.pretrain(run) == "no val/loss logged"
    assert (run.root / "fit.log").read_text().count("fake fit") == 4  # appended, one line per attempt


def test_instruct_needs_its_pretrained_checkpoint(cfg, tmp_path):
    fit = FitRunner(cfg, python=_fake_python(tmp_path))
    run = instruct_runs(cfg)[1]
    assert run.label == "decllm_biattn-s"
    with pytest.raises(StudyError, match=r"instruct decllm_biattn-s: pretrained checkpoint .*decllm-s/checkpoints/last.ckpt is missing"):
        fit.instruct(run)
    assert not run.root.exists()  # nothing was started
    _ckpt(pretrain_runs(cfg)[1].root, 4)
    _ckpt(run.root, 2)
    assert fit.instruct(run) == "no val/loss logged"
    words = shlex.split((run.root / "command.txt").read_text())
    assert words[words.index("--model.init_args.bidirectional_prefix") + 1] == "true"


def test_instruct_data_leaves_out_the_held_out_tasks(cfg, tmp_path):
    from lightning_redllm.data.manifest import read_manifest

    cfg["instruct"]["held_out_tasks"] = ["kjv_book_of_verse"]
    fit = FitRunner(cfg)
    assert fit.instruct_data() == "1033 train / 103 val examples, held out: kjv_book_of_verse"  # bundled: 1183 / 123
    data = tmp_path / "out" / "runs" / "data"
    for split, n in (("train", 1033), ("val", 103)):
        rows = [json.loads(line) for line in (data / f"instruct-{split}.jsonl").read_text().splitlines()]
        assert len(rows) == n and "kjv_book_of_verse" not in {r["task_name"] for r in rows}
        assert read_manifest(data / f"instruct-{split}")["totals"]["documents"] == n
    cfg["instruct"]["held_out_tasks"] = ["kjv_book_of_verse", "kjv_verse_lookup", "jargon_definition",
                                         "kjv_next_verse", "python_topic_intro"]
    with pytest.raises(StudyError, match=r"instruct: no train examples left after holding out \['jargon_definition'"):
        fit.instruct_data()
