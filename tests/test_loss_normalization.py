"""Token-weighted loss over the whole optimizer step (T5X's normalization): with ragged instruction
targets, batch 8 == batch 2 x accumulate 4 == 2 gloo ranks x batch 2 x accumulate 2 in gradient."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("grad_step", HERE / "data" / "grad_step.py")
grad_step = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(grad_step)


def _max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and a
    return max(((a[k] - b[k]).norm() / b[k].norm().clamp(min=1e-30)).item() for k in a)


# fp32 gradients summed in a different order (per micro-batch, per rank): a few ulps of fp32 per
# element, i.e. ~1e-6 relative in norm; 1e-5 leaves room for any CPU kernel
FP32_TOL = 1e-5


def test_the_examples_are_ragged():
    batch = grad_step.examples()
    counts = [int(mb["target_lengths"].sum()) for mb in grad_step.micro_batches(batch, 0, 8, 2)]
    assert len(set(counts)) > 1, counts  # otherwise the normalizations would agree trivially


@pytest.mark.parametrize("family", ["decllm", "redllm"])
def test_accumulation_equals_one_big_batch(family, tmp_path):
    big, _ = grad_step.step_gradients(family, "step_tokens", 8, 1, root=str(tmp_path))
    acc, _ = grad_step.step_gradients(family, "step_tokens", 2, 4, root=str(tmp_path))
    assert _max_rel_diff(acc, big) < FP32_TOL
    # the mean of micro-batch means weighs tokens differently: the check above can fail
    naive, _ = grad_step.step_gradients(family, "micro_batch", 2, 4, root=str(tmp_path))
    assert _max_rel_diff(naive, big) > 100 * FP32_TOL
    # and for one micro-batch per step the two normalizations agree
    same, _ = grad_step.step_gradients(family, "micro_batch", 8, 1, root=str(tmp_path))
    assert _max_rel_diff(same, big) < FP32_TOL


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_big_batch(tmp_path):
    family = "decllm"
    big, _ = grad_step.step_gradients(family, "step_tokens", 8, 1, root=str(tmp_path))
    out = tmp_path / "ddp.pt"
    r = subprocess.run([sys.executable, str(HERE / "data" / "grad_step.py"), family, "step_tokens", "2", "2", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)
    assert _max_rel_diff(ddp, big) < FP32_TOL
