"""What an evaluation gets: the config, the output folder, the runs, a loader and a logger.

An evaluation is a function ``evaluation(ctx) -> summary`` that reads what it needs through the
context and writes its results under ``ctx.out`` (JSON, and a plot when matplotlib is there). The
loader is a parameter so a test can hand an evaluation a model built in memory.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config import StudyError
from ..files import write_json_atomic
from ..plan import Run, instruct_runs, pretrain_runs

#: checkpoint path -> (model in eval mode, tokenizer, ModelConfig)
Loader = Callable[[Path], tuple]


def load_checkpoint(ckpt: Path, device: str = "cpu") -> tuple:
    from ...generate.load import load_for_inference

    if not ckpt.exists():
        raise StudyError(f"checkpoint {ckpt} is missing (did its training stage finish?)")
    return load_for_inference(ckpt, device=device)


@dataclass
class EvalContext:
    cfg: dict
    out: Path
    pretrained: list[Run]  # every pretraining run (label = <family>-<size>)
    tuned: list[Run]       # every instruction-tuning run (label = <variant>-<size>)
    load: Loader
    log: Callable[[str], None] = print

    @classmethod
    def for_study(cls, cfg: dict, log: Callable[[str], None] = print) -> "EvalContext":
        device = cfg.get("device", "cpu")
        return cls(cfg, Path(cfg["out_dir"]), pretrain_runs(cfg), instruct_runs(cfg),
                   lambda ckpt: load_checkpoint(ckpt, device), log)

    @property
    def device(self) -> str:
        return self.cfg.get("device", "cpu")

    def settings(self, evaluation: str) -> dict:
        """The config's ``evaluate.<evaluation>`` mapping ({} when empty or absent)."""
        return self.cfg["evaluate"].get(evaluation) or {}

    def train_length(self) -> int:
        """The pretraining sequence length (recorded in the first pretraining run's checkpoint; 2048 if absent)."""
        from ...eval.extrapolation import checkpoint_seq_len

        return checkpoint_seq_len(self.pretrained[0].ckpt) or 2048

    def results(self, name: str) -> dict:
        """An earlier evaluation's JSON under ``out``."""
        return json.loads((self.out / name).read_text())

    def write(self, name: str, data: Any) -> None:
        write_json_atomic(self.out / name, data)

    def plot(self, what: str, draw: Callable[[], Any]) -> None:
        """Draw a figure; without matplotlib say so and go on (the JSON is the result)."""
        try:
            draw()
        except ImportError as err:
            self.log(f"  no {what} plot: {err}")
