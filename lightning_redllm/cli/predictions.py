"""Where ``predict`` results go: one JSON line per example, and a summary line on stdout.

``python -m lightning_redllm predict`` adds :class:`PredictionWriter` unless the config already has a
``BasePredictionWriter``; each line is ``{"index": i, "nll": ..., "tokens": n}`` (mean NLL in nats
over the example's scored target tokens), in the order the examples were read. Under several
processes each rank writes its own ``predictions-rank<R>.jsonl``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter


class PredictionWriter(BasePredictionWriter):
    """Args:
        path: output file; default ``<trainer.default_root_dir>/predictions.jsonl``.
    """

    def __init__(self, path: Optional[str] = None) -> None:
        super().__init__(write_interval="batch")
        self.path = path
        self._file = None
        self._count = 0
        self._nll_sum = 0.0
        self._tokens = 0
        self.written: Optional[Path] = None

    def _target(self, trainer: L.Trainer) -> Path:
        path = Path(self.path) if self.path else Path(trainer.default_root_dir) / "predictions.jsonl"
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}-rank{trainer.global_rank}{path.suffix}")
        return path

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.written = self._target(trainer)
        self.written.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.written, "w")
        self._count, self._nll_sum, self._tokens = 0, 0.0, 0

    def write_on_batch_end(self, trainer, pl_module, prediction: Any, batch_indices, batch, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        nll = prediction["nll"].detach().float().cpu().tolist()
        tokens = prediction.get("tokens")
        tokens = tokens.detach().cpu().tolist() if tokens is not None else [None] * len(nll)
        for value, n in zip(nll, tokens):
            self._file.write(json.dumps({"index": self._count, "nll": value, "tokens": n}) + "\n")
            self._count += 1
            if n:
                self._nll_sum += value * n
                self._tokens += n

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._file is None:
            return
        self._file.close()
        self._file = None
        mean = self._nll_sum / self._tokens if self._tokens else float("nan")
        ppl = math.exp(min(mean, 30.0)) if self._tokens else float("nan")
        print(f"predict: {self._count} examples, {self._tokens} target tokens, mean NLL {mean:.4f} nats/token "
              f"(ppl {ppl:.2f}) -> {self.written}", flush=True)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


__all__ = ["PredictionWriter"]
