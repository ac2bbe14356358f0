"""bf16 on a CPU whose kernels cannot run bf16 attention: one line that says what to change, through
the real entry point, instead of torch's C++ check from deep inside the first forward.

The failure is real on Intel AMX CPUs under ``ATEN_CPU_CAPABILITY=avx2|default`` (see
tests/test_cpu_kernels.py); here it is also simulated on any machine by a ``sitecustomize`` that
makes bf16 CPU ``scaled_dot_product_attention`` raise torch's own error.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_cpu_kernels import _FAKE_AMX

HERE = Path(__file__).resolve().parent
FIT = ["fit", "--trainer.precision", "bf16-mixed", "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
       "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false"]


def _run(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightning_redllm", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def _broken_env(tmp_path: Path, **extra: str) -> dict:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_FAKE_AMX)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), **extra}


def _one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, r.stderr[-3000:]
    for needle in needles:
        assert needle in r.stderr, (needle, r.stderr[-3000:])


@pytest.mark.slow
def test_fit_bf16_with_broken_cpu_attention_is_one_line(tmp_path):
    root = tmp_path / "run"
    r = _run([*FIT, "--trainer.default_root_dir", str(root)], _broken_env(tmp_path, ATEN_CPU_CAPABILITY="default"),
             tmp_path)
    _one_line_error(r, "bf16 attention does not run with ATEN_CPU_CAPABILITY=default", "pack_vnni2",
                    "unset ATEN_CPU_CAPABILITY", "--trainer.precision 32-true")
    assert not list(root.rglob("*.ckpt")), "refused before any step: no checkpoint"
    # and the remedy it names works: the same command in fp32 trains
    ok = _run([*FIT, "--trainer.precision", "32-true", "--trainer.default_root_dir", str(tmp_path / "fp32")],
              _broken_env(tmp_path, ATEN_CPU_CAPABILITY="default"), tmp_path)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert list((tmp_path / "fp32").rglob("last.ckpt"))


@pytest.mark.slow
def test_fit_bf16_under_forced_kernels_runs_or_says_why(tmp_path):
    """On this machine's real kernels (no simulation): under a forced weaker capability, bf16 either
    trains, or (where torch's bf16 attention cannot run, e.g. Intel AMX) stops with the one line.
    Which of the two must agree with the library's probe run in a fresh process."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    probe = subprocess.run([sys.executable, "-c", "import json; from lightning_redllm.modules.cpu_kernels import "
                            "bf16_attention_problem as p; print(json.dumps(p(2, 2, 32, 128)))"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-2000:]
    problem = json.loads(probe.stdout.strip().splitlines()[-1])
    r = _run([*FIT, "--trainer.default_root_dir", str(tmp_path / "run")], env, tmp_path)
    if problem is None:
        assert r.returncode == 0, r.stderr[-3000:]
        assert list((tmp_path / "run").rglob("last.ckpt"))
    else:
        _one_line_error(r, "bf16 attention does not run with ATEN_CPU_CAPABILITY=default", problem)
