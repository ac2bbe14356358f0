"""The plan: the training runs of a study and its ordered list of stages, computed from the config alone.

Pure (no file is read or written), so ``study --dry_run`` and the tests can list a study without
running it. A stage's ``name`` is its marker's name and what ``--only`` / ``--redo`` prefixes match:

    pretrain/<family>-<size>     one ``fit`` per family and size
    instruct/data                instruction shards without the held-out tasks
    instruct/<variant>-<size>    one ``fit`` per tuning variant and size (from its pretrained run)
    eval/<evaluation>            perplexity, extrapolation, efficiency, instruct, lm_eval, quality_flops
    scaling                      scaling-law fits
    report                       report.md
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

from .config import VARIANTS, Size

#: the evaluations that run when their key is in the config's ``evaluate`` section, in this order
CONFIGURED_EVALUATIONS = ("perplexity", "extrapolation", "efficiency", "instruct", "lm_eval")


class Run(NamedTuple):
    """One training run: ``label`` (``<name>-<size>``), ``name`` (family of a pretraining run, variant of an
    instruction-tuning run), its size and the checkpoint everything downstream reads."""
    label: str
    name: str
    size: Size
    ckpt: Path

    @property
    def root(self) -> Path:
        return self.ckpt.parent.parent


@dataclass(frozen=True)
class Stage:
    name: str                         # marker name and --only/--redo match: "pretrain/redllm-s", "eval/perplexity"
    action: str                       # "pretrain" | "instruct_data" | "instruct" | "evaluate" | "report"
    run: Optional[Run] = None         # the training run of a pretrain/instruct stage
    evaluation: Optional[str] = None  # the evaluation of an "evaluate" stage


def run_dir(cfg: dict, kind: str, name: str) -> Path:
    """``<runs_dir>/<kind>/<name>``: the folder of one training run (kind: pretrain, instruct)."""
    return Path(cfg["runs_dir"]) / kind / name


def _run(cfg: dict, kind: str, name: str, size: Size) -> Run:
    label = f"{name}-{size.name}"
    return Run(label, name, size, run_dir(cfg, kind, label) / "checkpoints" / "last.ckpt")


def pretrain_runs(cfg: dict) -> list[Run]:
    """Every pretraining run: each size, each family (sizes outer)."""
    return [_run(cfg, "pretrain", fam, s) for s in cfg["_sizes"] for fam in cfg["families"]]


def instruct_runs(cfg: dict) -> list[Run]:
    """Every instruction-tuning run: each size, each variant whose family is pretrained (none when disabled)."""
    ins = cfg["instruct"]
    if not ins.get("enabled", True):
        return []
    return [_run(cfg, "instruct", v, s) for s in cfg["_sizes"] for v in ins.get("variants", [])
            if VARIANTS[v][0] in cfg["families"]]


def plan_stages(cfg: dict) -> list[Stage]:
    """The stages of a study, in the order they run."""
    stages = [Stage(f"pretrain/{r.label}", "pretrain", run=r) for r in pretrain_runs(cfg)]
    ins, tuned = cfg["instruct"], instruct_runs(cfg)
    if ins.get("enabled", True) and ins.get("variants"):
        stages.append(Stage("instruct/data", "instruct_data"))
        stages += [Stage(f"instruct/{r.label}", "instruct", run=r) for r in tuned]
    ev = cfg["evaluate"]
    for name in CONFIGURED_EVALUATIONS:
        if ev.get(name) is not None and not (name == "instruct" and not tuned):
            stages.append(Stage(f"eval/{name}", "evaluate", evaluation=name))
    if ev.get("perplexity") is not None:  # both read perplexity.json
        stages.append(Stage("eval/quality_flops", "evaluate", evaluation="quality_flops"))
        if ev.get("scaling") is not None:
            stages.append(Stage("scaling", "evaluate", evaluation="scaling"))
    stages.append(Stage("report", "report"))
    return stages


def format_plan(names: list[str], done: list[bool]) -> str:
    """The ``--dry_run`` listing: number, stage, done / to do."""
    return "\n".join(f"{i:3d} {stage:<32} {'done' if d else 'to do'}" for i, (stage, d) in enumerate(zip(names, done), 1))
