"""``python -m lightning_redllm study``: parse the flags, load the study file, then list (``--dry_run``)
or run its stages (after ``--redo``, restricted by ``--only``)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

from .config import load_study_config
from .driver import Study
from .plan import format_budgets, format_plan


def study_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m lightning_redllm study",
                                description="Run a RedLLM-vs-DecLLM study end to end (train, instruction-tune, evaluate, "
                                            "fit scaling laws, write report.md); resumes where it stopped.")
    p.add_argument("--config", required=True, help="study YAML, e.g. recipes/study/cpu-mini.yaml (or study/cpu-mini)")
    p.add_argument("--out_dir", default=None, help="override the config's out_dir")
    p.add_argument("--runs_dir", default=None, help="override the config's runs_dir (checkpoints, logs)")
    p.add_argument("--only", action="append", default=None, metavar="STAGE", help="run only stages starting with this")
    p.add_argument("--redo", action="append", default=[], metavar="STAGE", help="forget stages starting with this, then run")
    p.add_argument("--dry_run", action="store_true", help="list the stages and whether each is done; run nothing")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per process (torch and OMP_NUM_THREADS of every fit); 1 avoids oversubscribing "
                        "cores shared with other jobs (default: torch's choice)")
    a = p.parse_args(list(argv))
    if a.threads is not None:
        if a.threads < 1:
            p.error(f"--threads must be >= 1, got {a.threads}")
        import torch

        os.environ["OMP_NUM_THREADS"] = str(a.threads)  # inherited by every fit subprocess
        torch.set_num_threads(a.threads)
    cfg = load_study_config(a.config)
    if a.out_dir:
        cfg["out_dir"] = a.out_dir
        if not a.runs_dir and "runs_dir" in cfg:
            cfg["runs_dir"] = str(Path(a.out_dir) / "runs")
    if a.runs_dir:
        cfg["runs_dir"] = a.runs_dir
    study = Study(cfg, log=lambda m: print(m, flush=True))
    if a.dry_run:
        names = [stage for stage, _ in study.stages]
        print(format_plan(names, [bool(study.done(s)) for s in names]))
        budgets = format_budgets(cfg)
        if budgets:
            print(budgets)
        return 0
    if a.redo:
        study.redo(a.redo)
    return study.run(a.only)
