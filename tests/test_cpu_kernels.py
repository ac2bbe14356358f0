"""The numerics tests (marker ``numerics``) hold on every CPU kernel family, not only this machine's.

PyTorch picks its x86 kernels at run time (AVX-512, AVX2 or the portable default) and their
rounding differs; a tolerance tuned on one CPU turned CI red on another. ATEN_CPU_CAPABILITY
forces a lower kernel family, so this machine re-runs the numerics tests as a weaker CPU would.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


def test_the_capability_can_be_forced():
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ATEN_CPU_CAPABILITY": "default"},
                       capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "DEFAULT", r.stdout + r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_numerics_hold_on_weaker_cpu_kernels(capability, tmp_path):
    native = torch.backends.cpu.get_cpu_capability()
    if capability == "avx2" and (platform.machine() not in ("x86_64", "AMD64") or native in ("DEFAULT", "AVX2")):
        pytest.skip(f"native capability {native}: AVX2 is either unavailable or already what the suite runs on")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "numerics", "-p", "no:cacheprovider",
                        "-x", str(HERE)], env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, f"ATEN_CPU_CAPABILITY={capability}:\n{r.stdout[-4000:]}\n{r.stderr[-2000:]}"
    assert " passed" in r.stdout and "no tests ran" not in r.stdout
