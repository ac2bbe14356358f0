"""Test support: Lightning's DeepSpeedStrategy on CPU with gloo, so ZeRO-3 runs in CI.

Lightning refuses a non-CUDA accelerator for DeepSpeed ("only supported on CUDA GPUs"); the three
overrides below are the whole difference: DDP's environment setup, no CUDA device-index check, and
a CPU root device that still carries the local rank (DeepSpeed reads ``device.index``). Everything
else — ``deepspeed.zero.Init`` partitioning at construction, the ZeRO-3 optimizer, sharded
checkpoints — is DeepSpeed's real code path.
"""
from __future__ import annotations

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)

    def setup_distributed(self) -> None:
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    @property
    def root_device(self) -> torch.device:
        return torch.device("cpu", self.local_rank)
