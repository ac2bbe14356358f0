"""Probe, in a fresh process, whether bf16 attention runs on this CPU under the current
ATEN_CPU_CAPABILITY (tests/conftest.py runs it once per session and caches the answer).

Runs what the bf16 numerics tests run: a bf16-autocast forward and backward of both tiny families
at the tests' shapes, plus the library's own shape sweep (lightning_redllm.modules.cpu_kernels).
Prints one JSON line: {"ok": bool, "error": str, "capability": str}. Exits 0 either way: a
failure to run bf16 is the answer, not an error of the probe.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grad_step import SMALL  # noqa: E402

from lightning_redllm.config import ModelConfig  # noqa: E402
from lightning_redllm.models import build_model  # noqa: E402
from lightning_redllm.modules.cpu_kernels import bf16_attention_problem  # noqa: E402


def main() -> None:
    error = bf16_attention_problem(SMALL["n_heads"], SMALL["n_heads"], SMALL["head_dim"], 64)
    if error is None:
        try:
            for family in ("decllm", "redllm"):
                model = build_model(ModelConfig.from_name(f"{family}-tiny", **SMALL))
                ids = torch.randint(4, 200, (4, 64))
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    if family == "decllm":
                        out = model(input_ids=ids)
                    else:
                        out = model(ids[:, :32], ids[:, 32:])
                out.logits.float().sum().backward()
        except RuntimeError as err:
            error = (str(err).strip().splitlines() or [type(err).__name__])[0]
    print(json.dumps({"ok": error is None, "error": error or "",
                      "capability": torch.backends.cpu.get_cpu_capability()}))


if __name__ == "__main__":
    main()
