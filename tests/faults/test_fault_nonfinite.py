"""NaN/Inf loss or gradients: ``nan_policy=skip`` (count, log, leave weights and optimizer state
untouched) and stopping with ``NonFiniteLossError`` plus ``nonfinite-step<N>.ckpt`` after K bad steps."""
from __future__ import annotations

import math

import pytest
import torch
from fault_helpers import NaNRedLLM, Steps, fit_config, read_step_log, run_main, tiny_module, tiny_trainer

from lightning_redllm.data import PretrainDataModule
from lightning_redllm.modules import NonFiniteLossError


def _fit(tmp_path, steps: int, **module_kw):
    torch.manual_seed(0)
    m = tiny_module(NaNRedLLM, **module_kw)
    rec = Steps()
    t = tiny_trainer(tmp_path, steps, callbacks=[rec])
    dm = PretrainDataModule(seq_len=64, batch_size=2, num_workers=0, shuffle_buffer=0)
    return m, t, rec, lambda: t.fit(m, datamodule=dm)


@pytest.mark.parametrize("kind", ["loss", "grad"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_skip_counts_logs_and_leaves_weights_untouched(tmp_path, kind, value):
    m, t, rec, fit = _fit(tmp_path, 7, bad_steps=[2, 3, 5], bad_kind=kind, bad_value=value, max_bad_steps=3)
    fit()
    assert t.global_step == 7  # a skipped batch is consumed (and its LR-schedule slot with it)
    by_step = {r["step"]: r for r in rec.records}
    for step, r in by_step.items():
        bad = step in (2, 3, 5)
        assert r["weights_changed"] == (not bad), step
        assert r["opt_changed"] == (not bad), step
        assert r["finite"], step
        if kind == "grad":  # the loss itself was finite: only the update is dropped
            assert r["loss"] is not None and math.isfinite(r["loss"])
    assert m.skipped_steps == 3
    assert float(t.callback_metrics["train/skipped_steps"]) == 3.0
    assert not list(tmp_path.glob("nonfinite-*.ckpt"))


@pytest.mark.parametrize("kind", ["loss", "grad", "param"])
def test_stop_after_k_consecutive_bad_steps_saves_a_checkpoint(tmp_path, kind):
    """K=3: a bad step, a good one (streak resets), then bad from step 4 on -> stop at step 6."""
    bad = [1] + list(range(4, 20))
    if kind == "param":  # a NaN weight poisons every later step by itself
        bad = [4]
    m, t, rec, fit = _fit(tmp_path, 20, bad_steps=bad, bad_kind=kind, max_bad_steps=3)
    with pytest.raises(NonFiniteLossError, match=r"at step 6 \(3 consecutive.*nonfinite-step6\.ckpt") as info:
        fit()
    assert [r["step"] for r in rec.records] == [0, 1, 2, 3, 4, 5]  # step 6 raised before its end
    ckpt = tmp_path / "nonfinite-step6.ckpt"
    assert str(ckpt) in str(info.value)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["module_counters"]["bad_streak"] == 3
    assert saved["module_counters"]["skipped_steps"] == (3 if kind == "param" else 4)
    weights_finite = all(torch.isfinite(v).all() for v in saved["state_dict"].values())
    assert weights_finite == (kind != "param")  # the poisoned weight is there to inspect


def test_policy_stop_stops_at_the_first_bad_step(tmp_path):
    m, t, rec, fit = _fit(tmp_path, 6, bad_steps=[2], bad_kind="grad", nan_policy="stop")
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient at step 2 .*nan_policy='stop'"):
        fit()
    assert (tmp_path / "nonfinite-step2.ckpt").exists()


def test_nonfinite_stop_through_the_cli(tmp_path, capsys):
    """The recipe sets the policy; the run exits 1 with one line naming the checkpoint."""
    model = {"class_path": "fault_helpers.NaNRedLLM",
             "init_args": {"preset": "redllm-tiny", "overrides": {"d_model": 64, "n_heads": 2, "head_dim": 32,
                                                                  "ffn_dim": 128, "n_encoder_layers": 1,
                                                                  "n_decoder_layers": 1},
                           "bad_steps": [3, 4], "bad_kind": "loss", "nan_policy": "skip", "max_bad_steps": 2}}
    cfg = fit_config(tmp_path, steps=8, workers=0, step_log=tmp_path / "steps.log", model=model)
    code, _, err = run_main(["fit", "--config", str(cfg)], capsys)
    assert code == 1
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert "NonFiniteLossError" in errors[0] and str(tmp_path / "nonfinite-step4.ckpt") in errors[0]
    assert read_step_log(tmp_path / "steps.log")[4] == "skipped"  # step index 3 (4th batch) was skipped
    assert torch.load(tmp_path / "nonfinite-step4.ckpt", weights_only=True)["global_step"] == 4
