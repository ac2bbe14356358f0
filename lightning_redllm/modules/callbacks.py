"""Callbacks the recipes use: token throughput / MFU."""
from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ThroughputMonitor


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
