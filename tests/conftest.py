"""Shared pytest setup: the `gpu` marker skips when no CUDA device is present; the
`bf16_cpu_attention` fixture says whether this process's CPU kernels can run bf16 attention."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` (the CI command): two workers on two cores, so one thread each -- for this process
    # and, through the environment, every subprocess it starts (the CLI runs, the 2-rank launches);
    # two threads per worker would put four busy threads on two cores
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

HERE = Path(__file__).resolve().parent

#: how a skip caused by the probe below starts (tests/test_cpu_kernels.py checks that every skip
#: under a forced capability carries it, so nothing else can hide behind a forced-kernel re-run)
BF16_SKIP_PREFIX = "bf16 CPU attention unusable under forced"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def _hardware() -> str:
    """What the CPU offers according to torch (not the dispatched capability)."""
    flags = [name for name, probe in (("avx512", "_is_avx512_supported"), ("avx512_bf16", "_is_avx512_bf16_supported"),
                                      ("amx_tile", "_is_amx_tile_supported"))
             if getattr(torch.cpu, probe, lambda: False)()]
    return ",".join(flags) or "no avx512/amx"


@functools.lru_cache(maxsize=None)
def _bf16_probe(capability: str) -> dict:
    """Run tests/data/bf16_probe.py once in a fresh process with this environment."""
    r = subprocess.run([sys.executable, str(HERE / "data" / "bf16_probe.py")], env=dict(os.environ),
                       capture_output=True, text=True, timeout=300)
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode != 0 or not lines:
        # the probe itself died (a crash, not a RuntimeError): that is an answer too, but say so
        return {"ok": False, "error": f"probe exited {r.returncode}: {(r.stderr.strip().splitlines() or [''])[-1]}"}
    return json.loads(lines[-1])


@pytest.fixture
def bf16_cpu_attention():
    """Skip (with the reason) a bf16 CPU test whose attention kernel cannot run in this process.

    Decided only for a *forced* capability (ATEN_CPU_CAPABILITY set, as tests/test_cpu_kernels.py
    does): on the native kernels a bf16 failure is a real failure and must turn the test red. The
    probe runs the same bf16 forward/backward in a subprocess, once per session, and its error is
    quoted in the skip reason (known case: torch's bf16 flash attention on AMX hardware under
    forced avx2/default kernels, see test_torch_bf16_sdpa_under_forced_capability)."""
    forced = os.environ.get("ATEN_CPU_CAPABILITY")
    if not forced:
        return
    result = _bf16_probe(forced)
    if not result["ok"]:
        pytest.skip(f"{BF16_SKIP_PREFIX} ATEN_CPU_CAPABILITY={forced} (hardware: {_hardware()}; torch "
                    f"{torch.__version__}): {result['error']}")
