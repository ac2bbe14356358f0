"""Callbacks the recipes use: token throughput / MFU, and a checkpoint that always holds the last step."""
from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint, ThroughputMonitor


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose ``last.ckpt`` is always the final step of the run.

    With ``every_n_train_steps=100`` and ``max_steps=250``, Lightning's own callback leaves
    ``last.ckpt`` at step 200 (it saves "last" at the end only when nothing was saved before), so
    ``init_from``, ``generate``, ``export`` and the next stage would silently read 50 steps old
    weights. This one saves once more when training ends past the last save (same arguments).
    """

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and trainer.global_step > 0 and self._last_global_step_saved != trainer.global_step:
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)


def batch_sequences(batch: dict[str, Any]) -> int:
    key = "tokens" if "tokens" in batch else "inputs"
    return int(batch[key].shape[0])


def batch_tokens(batch: dict[str, Any]) -> int:
    """Real (unpadded) tokens in a data batch."""
    if "tokens" in batch:
        return int(batch["tokens"].numel())
    return int(batch["input_lengths"].sum() + batch["target_lengths"].sum())


class TokenThroughputMonitor(ThroughputMonitor):
    """Lightning's ``ThroughputMonitor`` for our batch dicts: logs ``train/samples_per_sec``,
    ``train/items_per_sec`` (tokens/s) and, on a GPU Lightning knows, ``train/device/mfu`` using the
    module's analytic ``flops_per_batch`` (``ModelConfig`` FLOPs per sequence x batch).

    Args:
        window_size: batches averaged per reading.
    """

    def __init__(self, window_size: int = 20) -> None:
        super().__init__(batch_size_fn=batch_sequences, length_fn=batch_tokens, window_size=window_size, separator="/")
