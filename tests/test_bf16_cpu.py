"""bf16 mixed precision on CPU (what CI can run): one training step of each family under Lightning's
``bf16-mixed`` gives the fp32 loss and gradients within bf16 accuracy, and a short fit stays finite."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_redllm.data import PretrainDataModule
from lightning_redllm.modules import DecLLMModule, RedLLMModule

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("grad_step", HERE / "data" / "grad_step.py")
grad_step = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(grad_step)


def one_step(family: str, precision: str, batch, root) -> tuple[float, dict[str, torch.Tensor]]:
    L.seed_everything(0)
    cls = RedLLMModule if family == "redllm" else DecLLMModule
    module = cls(preset=f"{family}-tiny", overrides=grad_step.SMALL, schedule="constant", warmup_steps=0)
    capture = grad_step.GradCapture()
    losses = []

    class Loss(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, b, i):
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, precision=precision, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=root,
                        callbacks=[capture, Loss()])
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None))
    return losses[0], capture.grads


@pytest.mark.numerics
@pytest.mark.parametrize("family", ["decllm", "redllm"])
def test_bf16_mixed_step_matches_fp32(family, tmp_path, bf16_cpu_attention):
    batch = next(iter(PretrainDataModule(seq_len=64, batch_size=4, num_workers=0).train_dataloader()))
    loss32, g32 = one_step(family, "32-true", batch, tmp_path)
    loss16, g16 = one_step(family, "bf16-mixed", batch, tmp_path)
    # bf16 keeps 8 mantissa bits (eps 7.8e-3); the loss is an average over 256 tokens of terms
    # computed from bf16 matmuls with fp32 accumulation and fp32 softmax: ~1e-3 relative; 1e-2 bound
    assert loss16 == pytest.approx(loss32, rel=1e-2)
    assert g32.keys() == g16.keys() and g32
    worst = 0.0
    for name, ref in g32.items():
        got = g16[name].float()
        # per-tensor relative error of a gradient through a few bf16 matmuls: a few eps; 8e-2 bound
        rel = ((got - ref).norm() / ref.norm().clamp(min=1e-12)).item()
        worst = max(worst, rel)
        assert rel < 8e-2, (name, rel)
    # and bf16 really was used: the gradients are not bit-identical to fp32
    assert worst > 1e-5


@pytest.mark.parametrize("family", ["decllm", "redllm"])
def test_bf16_mixed_fit_is_finite_and_learns(family, tmp_path):
    L.seed_everything(0)
    batch = next(iter(PretrainDataModule(seq_len=64, batch_size=4, num_workers=0).train_dataloader()))
    cls = RedLLMModule if family == "redllm" else DecLLMModule
    module = cls(preset=f"{family}-tiny", overrides=grad_step.SMALL, schedule="constant", warmup_steps=0,
                 lr=1e-2, z_loss=0.0)
    losses = []

    class Loss(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, b, i):
            losses.append(float(outputs["loss"]))

    trainer = L.Trainer(accelerator="cpu", max_steps=20, precision="bf16-mixed", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path, callbacks=[Loss()])
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch] * 20, batch_size=None))
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < 0.7 * losses[0], losses
    assert module.skipped_steps == 0
