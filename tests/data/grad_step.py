"""One optimizer step of an instruction-tuning module; returns the gradient the optimizer would see.

Used by tests/test_loss_normalization.py in-process (1 device) and as a script under 2 gloo ranks:
    python grad_step.py FAMILY NORMALIZATION MICRO_BATCH ACCUMULATE OUT.pt
Each rank takes its own contiguous share of the same 8 examples (no distributed sampler), so
every layout sees exactly the same tokens in one optimizer step.
"""
from __future__ import annotations

import os
import sys

import lightning as L
import torch

from lightning_redllm.data import InstructDataModule
from lightning_redllm.modules import DecLLMModule, RedLLMModule

SMALL = dict(d_model=64, n_heads=2, head_dim=32, ffn_dim=128, n_layers=2, n_encoder_layers=1, n_decoder_layers=1)
N_EXAMPLES = 8


def examples() -> dict[str, torch.Tensor]:
    """8 real instruction examples with ragged target lengths (bundled FLAN-format shards)."""
    dm = InstructDataModule(batch_size=N_EXAMPLES, num_workers=0, max_input_len=64, max_target_len=32)
    return next(iter(dm.train_dataloader()))


def micro_batches(batch: dict[str, torch.Tensor], start: int, stop: int, size: int) -> list[dict[str, torch.Tensor]]:
    return [{k: v[i:i + size] for k, v in batch.items()} for i in range(start, stop, size)]


class GradCapture(L.Callback):
    """Records the gradients the optimizer steps with: after the module's ``on_before_optimizer_step``
    (which normalizes them) and gradient clipping, i.e. at the end of Lightning's closure."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        opt = trainer.optimizers[0]
        step = opt.step

        def capturing_step(closure=None, **kwargs):
            def wrapped():
                result = closure()
                self.grads = {n: p.grad.detach().clone() for n, p in pl_module.model.named_parameters()
                              if p.grad is not None}
                return result

            return step(closure=wrapped, **kwargs)

        opt.step = capturing_step


def step_gradients(family: str, normalization: str, micro: int, accumulate: int, *, devices: int = 1,
                   root: str = ".") -> tuple[dict[str, torch.Tensor], int]:
    """(gradients of rank 0 before the first optimizer step, global rank)."""
    batch = examples()
    L.seed_everything(0)
    cls = RedLLMModule if family == "redllm" else DecLLMModule
    module = cls(preset=f"{family}-tiny", overrides=SMALL, z_loss=1e-4, schedule="constant", warmup_steps=0,
                 loss_normalization=normalization)
    capture = GradCapture()
    kwargs = dict(strategy="ddp", use_distributed_sampler=False) if devices > 1 else {}
    trainer = L.Trainer(accelerator="cpu", devices=devices, max_steps=1, accumulate_grad_batches=accumulate,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        default_root_dir=root, callbacks=[capture], **kwargs)
    # the rank is only known once the trainer exists; each rank its contiguous share of the examples
    share = N_EXAMPLES // devices
    rank = trainer.global_rank
    loader = torch.utils.data.DataLoader(micro_batches(batch, rank * share, (rank + 1) * share, micro),
                                         batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    return capture.grads, rank


if __name__ == "__main__":
    family, norm, micro, accumulate, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    grads, rank = step_gradients(family, norm, micro, accumulate, devices=2, root=str(out) + ".run")
    if rank == 0:
        torch.save(grads, out)
    # gloo's threads sometimes abort the interpreter during teardown (SIGABRT after the last Python
    # frame, ~1 run in 8 with torch 2.13 CPU); the result is written, so leave without the teardown
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
