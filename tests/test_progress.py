"""Progress output (lightning_redllm/cli/progress.py): plain lines when stdout is not a terminal, a
step-counting bar that continues after a resume, no unmeasured FLOPs, no Lightning adverts."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel

from lightning_redllm.cli import progress
from lightning_redllm.cli.progress import (ProgressDefaults, ProgressLog, StepProgressBar, eta_seconds, format_duration,
                                       per_second)

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(d_model=64, n_heads=2, head_dim=32, ffn_dim=128, n_layers=2, n_encoder_layers=1, n_decoder_layers=1)
TINY = ["--model.init_args.overrides", json.dumps(SMALL), "--data.init_args.seq_len", "64",
        "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0", "--data.init_args.val_batches", "2"]
#: `[train] step 4/6 (66%) elapsed 0:00:02 ETA 0:00:01 tok/s 1,579 train/loss=8.198 ...`
LINE = re.compile(r"^\[train\] step (\d+)/(\d+) \(\d+%\) elapsed \d+:\d\d:\d\d ETA (\S+) tok/s ([\d,]+) .*"
                  r"train/loss=([\d.]+)", re.M)


def _fit(args: list[str], root: Path) -> subprocess.CompletedProcess:
    """`python -m lightning_redllm fit` with stdout a pipe (not a terminal), as under nohup/CI/SLURM."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run([sys.executable, "-m", "lightning_redllm", "fit", *TINY, *args,
                        "--trainer.default_root_dir", str(root)],
                       cwd=root.parent, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _steps(stdout: str) -> list[tuple[int, int]]:
    return [(int(m[1]), int(m[2])) for m in LINE.finditer(stdout)]


@pytest.fixture(scope="module")
def first_four(tmp_path_factory):
    """fit to step 4 (last.ckpt written at the step-4 validation) with the progress bar switched off."""
    root = tmp_path_factory.mktemp("resume") / "run"
    r = _fit(["--trainer.max_steps", "4", "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1",
              "--trainer.enable_progress_bar", "false"], root)
    return r, root / "checkpoints" / "last.ckpt"


def test_plain_progress_lines_when_stdout_is_not_a_terminal(tmp_path):
    r = _fit(["--trainer.max_steps", "6", "--trainer.val_check_interval", "3", "--trainer.log_every_n_steps", "2"],
             tmp_path / "run")
    out, everything = r.stdout, r.stdout + r.stderr
    assert _steps(out) == [(2, 6), (4, 6), (6, 6)], out
    for m in LINE.finditer(out):
        assert int(m[4].replace(",", "")) > 0 and float(m[5]) > 0, m[0]
    assert [m[3] for m in LINE.finditer(out)][-1] == "0:00:00"  # ETA at the last step
    assert "[train] starting at step 0/6" in out
    assert re.search(r"^\[val\] step 3 val/loss=[\d.]+$", out, re.M), out
    # the summary is still printed, without Lightning's unmeasured FLOPs; no epoch "/-2"; no adverts
    assert "Total params" in everything and "FLOPs" not in everything and "Total Flops" not in everything
    assert "/-2" not in everything
    assert "litlogger" not in everything and "litmodels" not in everything and "💡" not in everything


def test_enable_progress_bar_false_turns_the_lines_off(first_four):
    r, ckpt = first_four
    assert ckpt.exists()
    assert "[train]" not in r.stdout and "[val]" not in r.stdout, r.stdout


def test_resume_continues_the_step_count(first_four, tmp_path):
    _, ckpt = first_four
    r = _fit(["--trainer.max_steps", "6", "--trainer.val_check_interval", "2", "--trainer.log_every_n_steps", "1",
              "--ckpt_path", str(ckpt)], tmp_path / "run")
    assert "[train] resuming at step 4/6" in r.stdout, r.stdout
    assert _steps(r.stdout) == [(5, 6), (6, 6)], r.stdout
    assert "[train] stopped at step 6/6" in r.stdout


# ------------------------------------------------------------------------------------------------
# the terminal bar, in process (tiny BoringModel)


class _BarProbe(L.Callback):
    def __init__(self):
        self.seen: list[tuple[int, int]] = []
        self.initial = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        bar = trainer.progress_bar_callback.train_progress_bar
        self.seen.append((bar.n, bar.total))
        self.initial = bar.initial


@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint")
def test_step_bar_counts_optimizer_steps_from_the_resumed_step(tmp_path):
    def trainer(steps, *callbacks, **kw):
        return L.Trainer(max_steps=steps, logger=False, enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=tmp_path, callbacks=[StepProgressBar(), *callbacks], **kw)

    first = trainer(4, accumulate_grad_batches=2, enable_checkpointing=False)
    first.fit(BoringModel())
    ckpt = tmp_path / "four.ckpt"
    first.save_checkpoint(ckpt)
    probe = _BarProbe()
    trainer(6, probe, accumulate_grad_batches=2, enable_checkpointing=False).fit(BoringModel(), ckpt_path=str(ckpt))
    # two micro-batches per optimizer step; the stock bar reads batches of the epoch against the steps left
    assert probe.seen == [(4, 6), (5, 6), (5, 6), (6, 6)], probe.seen
    assert probe.initial == 4  # tqdm's it/s counts the steps of this run only


@pytest.mark.parametrize("tty, expected", [(True, StepProgressBar), (False, ProgressLog)])
def test_defaults_pick_the_bar_on_a_terminal_and_lines_otherwise(tty, expected, monkeypatch):
    class Out(io.StringIO):
        def isatty(self):
            return tty

    monkeypatch.setattr(sys, "stdout", Out())
    assert type(ProgressDefaults().progress_bar()) is expected
    assert type(ProgressDefaults(plain=tty).progress_bar()) is not expected  # the explicit choice wins
    with pytest.raises(ValueError, match="every_n_steps"):
        ProgressDefaults(every_n_steps=0)


# ------------------------------------------------------------------------------------------------
# arithmetic


def test_rates_eta_and_durations():
    assert per_second(300, 2.0) == 150 and per_second(5, 0.0) is None
    assert eta_seconds(steps_done=20, seconds=10.0, steps_left=30) == 15.0
    assert eta_seconds(0, 10.0, 30) is None and eta_seconds(20, 0.0, 30) is None
    assert eta_seconds(20, 10.0, None) is None and eta_seconds(20, 10.0, 0) == 0.0
    assert format_duration(0) == "0:00:00" and format_duration(3725.4) == "1:02:05"
    assert format_duration(86400 + 61) == "1d 0:01:01" and format_duration(None) == "?"


def test_line_eta_from_the_run_pace_and_tokens_per_second_since_the_last_line():
    log = ProgressLog(every_n_steps=10)
    log._total = 110
    log._start = progress._Mark(step=10, tokens=1000, time=100.0)  # resumed at step 10
    log._last = progress._Mark(step=20, tokens=3000, time=115.0)
    line = log.format_line(progress._Mark(step=30, tokens=5000, time=120.0), {"v_num": 3, "train/loss": 2.5})
    # 20 steps in 20 s since the start -> 80 left take 80 s (the last window's pace would say 40 s);
    # 2000 tokens in the 5 s since the previous line
    assert line == "[train] step 30/110 (27%) elapsed 0:00:20 ETA 0:01:20 tok/s 400 train/loss=2.5"


def test_a_line_every_n_steps_or_every_t_seconds_whichever_first(monkeypatch, capsys):
    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    trainer = SimpleNamespace(global_step=0, estimated_stepping_batches=9, log_every_n_steps=4, loggers=[],
                              progress_bar_metrics={"train/loss": 1.0})
    module = SimpleNamespace(tokens_seen=0)
    log = ProgressLog(every_seconds=25.0)  # every 4 steps (log_every_n_steps) or 25 s
    log.on_train_start(trainer, module)
    for step in range(1, 10):
        trainer.global_step, module.tokens_seen, now[0] = step, 100 * step, 10.0 * step  # 10 s a step
        log.on_train_batch_end(trainer, module, None, None, step - 1)
        log.on_train_batch_end(trainer, module, None, None, step - 1)  # accumulation: same step, no new line
    assert _steps(capsys.readouterr().out) == [(3, 9), (4, 9), (7, 9), (8, 9), (9, 9)]
