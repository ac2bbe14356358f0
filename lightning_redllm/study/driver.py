"""The driver: a study is its plan, run stage by stage: training runs (pretraining, ablations, instruction
tuning), then evaluations, then the report."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .config import Size
from .evaluations import EVALUATIONS, EvalContext
from .fit import FitRunner
from .plan import Run, Stage, plan_stages
from .report_stage import study_report
from .runner import KILL_AFTER_ENV, StageRunner, StudyLog


class Study:
    """Runs the stages of one study config in order, skipping those already marked done."""

    def __init__(self, cfg: dict, *, python: str = sys.executable, log: Callable[[str], None] = print,
                 fail_after: Optional[str] = None):
        self.cfg = cfg
        self.out = Path(cfg["out_dir"])
        self.runs = Path(cfg["runs_dir"])
        self.log = StudyLog(log)
        self.runner = StageRunner(self.out / ".study", self.log, fail_after or os.environ.get(KILL_AFTER_ENV))
        self.fit = FitRunner(cfg, python=python, log=self.log)
        self.ctx = EvalContext.for_study(cfg, log=self.log)
        self.plan: list[Stage] = plan_stages(cfg)
        self.stages: list[tuple[str, Callable[[], Any]]] = [(s.name, self.action(s)) for s in self.plan]

    def action(self, stage: Stage) -> Callable[[], str]:
        """What a stage of the plan does."""
        if stage.action == "pretrain":
            return lambda: self.fit.pretrain(stage.run)
        if stage.action == "ablation":
            return lambda: self.fit.ablation(stage.run)
        if stage.action == "instruct_data":
            return self.fit.instruct_data
        if stage.action == "instruct":
            return lambda: self.fit.instruct(stage.run)
        if stage.action == "evaluate":
            return lambda: EVALUATIONS[stage.evaluation](self.ctx)
        if stage.action == "report":
            return lambda: study_report(self.ctx, {s: self.done(s) for s, _ in self.stages if s != "report"})
        raise ValueError(f"unknown stage action {stage.action!r} of {stage.name}")

    def run(self, only: Optional[Sequence[str]] = None) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        self.runs.mkdir(parents=True, exist_ok=True)
        n = len(self.stages)
        self.log(f"{self.cfg['name']}: {n} stages, results in {self.out}, runs in {self.runs}")
        self.runner.run(self.stages, only)
        self.log(f"all {n} stages done in {self.log.elapsed():.0f} s; report: {self.out / 'report.md'}")
        return 0

    # -- markers (the runner's) ----------------------------------------------------------------
    def marker(self, stage: str) -> Path:
        return self.runner.marker(stage)

    def done(self, stage: str) -> Optional[dict]:
        return self.runner.done(stage)

    def redo(self, prefixes: Sequence[str]) -> None:
        self.runner.redo([s for s, _ in self.stages], prefixes)

    # -- the runs (the plan's) and their command lines (the fit runner's) ----------------------
    def pretrained(self) -> list[Run]:
        return self.ctx.pretrained

    def tuned(self) -> list[Run]:
        return self.ctx.tuned

    def pretrain_args(self, fam: str, size: Size, seed: Optional[int] = None) -> tuple[Path, list[str], list[str]]:
        return self.fit.pretrain_args(fam, size, seed)

    def instruct_args(self, variant: str, size: Size, seed: Optional[int] = None) -> tuple[Path, list[str], list[str]]:
        return self.fit.instruct_args(variant, size, seed)

    def ablation_args(self, arm: str, size: Size, seed: Optional[int] = None) -> tuple[Path, list[str], list[str]]:
        return self.fit.ablation_args(arm, size, seed)
