"""The study's last stage: training curves (``curves.json`` + plots), the study's own record
(``study.json``: config, stage times, machine), the finding-by-finding verdicts (``findings.json``)
and ``report.md`` over everything in the output folder."""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from .evaluations.context import EvalContext
from .findings import study_findings
from .plan import ablation_runs, size_budgets
from .report import run_curves, write_report

#: evaluation -> the JSON it writes under the study's folder (what the findings read)
RESULTS = {"perplexity": "perplexity.json", "scaling": "scaling.json", "zero_shot": "zero_shot.json",
           "extrapolation": "extrapolation.json", "instruct": "instruct_eval.json", "ablations": "ablations.json"}


def study_report(ctx: EvalContext, markers: dict[str, Optional[dict]]) -> str:
    """``markers``: the marker (or None) of every other stage, for the stage times."""
    import torch

    from ..eval import plots

    curves = {}
    for run in ctx.pretrained:
        curves[f"pretrain/{run.label}"] = run_curves(run.root)
    for run in ctx.tuned:
        curves[f"instruct/{run.label}"] = run_curves(run.root)
    for run in ablation_runs(ctx.cfg):
        curves[f"ablation/{run.label}"] = run_curves(run.root)
    ctx.write("curves.json", {"kind": "lightning_redllm.curves/1", "runs": curves})
    try:
        plots.plot_curves({k.split("/", 1)[1]: v.get("val/loss", {}) for k, v in curves.items()
                           if k.startswith("pretrain/")}, ctx.out, name="curves_pretrain",
                          ylabel="val/loss (own objective)", title="pretraining validation loss")
        if any(k.startswith("instruct/") for k in curves):
            plots.plot_curves({k.split("/", 1)[1]: v.get("val/loss", {}) for k, v in curves.items()
                               if k.startswith("instruct/")}, ctx.out, name="curves_instruct",
                              ylabel="val/loss (seen tasks)", title="instruction tuning validation loss")
    except ImportError as err:
        ctx.log(f"  no curve plots: {err}")
    cfg = ctx.cfg
    info = {"kind": "lightning_redllm.study/1", "name": cfg["name"], "description": cfg.get("description", ""),
            "config": cfg["_path"],
            "stages": {s: (m or {}).get("seconds") for s, m in markers.items()},
            "wall_seconds": sum((m or {}).get("seconds") or 0 for m in markers.values()),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_name(),
            "seeds": cfg.get("seeds"),
            "budgets": ({name: asdict(b) for name, b in size_budgets(cfg).items()}
                        if cfg["pretrain"].get("tokens_per_parameter") is not None
                        or cfg["pretrain"].get("lr_rule") is not None else None)}
    ctx.write("study.json", info)
    ctx.write("findings.json", study_findings({k: ctx.results(f) if (ctx.out / f).exists() else None
                                               for k, f in RESULTS.items()}))
    path = write_report(ctx.out, title=f"Study `{cfg['name']}`")
    return str(path)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f", {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"
