"""``eval/instruct``: target loss per task of every instruction-tuned model, on seen and held-out tasks."""
from __future__ import annotations

from ..paired import over_seeds
from ..scoring import evaluation_tasks, task_scores
from .context import EvalContext

#: the paired comparisons of the tuned models: (metric, a, b, the study's sign of a - b, the claim)
PAIRS = [
    {"metric": "held_out_loss", "a": "redllm", "b": "decllm", "expected_sign": -1,
     "claim": "after tuning RedLLM is better on unseen tasks (lower loss)"},
    {"metric": "held_out_loss", "a": "decllm_biattn", "b": "decllm", "expected_sign": -1,
     "claim": "bidirectional attention over the input improves tuned DecLLM (lower loss)"},
    {"metric": "seen_loss", "a": "redllm", "b": "decllm", "expected_sign": None, "claim": "seen tasks"},
    {"metric": "seen_loss", "a": "decllm_biattn", "b": "decllm", "expected_sign": None, "claim": "seen tasks"},
]


def instruct(ctx: EvalContext) -> str:
    """Per-task target loss (seen tasks: validation split; held-out tasks: every example of
    both splits, never trained on) and the held-out multiple-choice task's accuracy.
    Writes ``instruct_eval.json`` (per model; over seeds: means, intervals, paired differences)."""
    ins = ctx.cfg["instruct"]
    ev = ctx.settings("instruct")
    tasks, held = evaluation_tasks(ins, int(ev.get("max_examples", 60)))
    out: dict = {"kind": "lightning_redllm.study_instruct/1", "held_out_tasks": sorted(held), "models": {}}
    for run in ctx.tuned:
        model, tok, cfg = ctx.load(run.ckpt)
        entry = {"variant": run.name, "name": run.name, "size": run.size.name, "seed": run.seed,
                 "config": cfg.to_dict(), **task_scores(model, tok, tasks, held)}
        out["models"][run.label] = entry
        ctx.log(f"  {run.label}: seen-task loss {entry['seen_loss']:.3f}, held-out-task loss "
                f"{entry['held_out_loss'] if entry['held_out_loss'] is None else round(entry['held_out_loss'], 3)}")
    out["over_seeds"] = over_seeds(out["models"], {"held_out_loss": "held-out-task target loss (never tuned on)",
                                                   "seen_loss": "seen-task target loss (validation split)"}, PAIRS)
    ctx.write("instruct_eval.json", out)
    return f"{len(out['models'])} tuned models, {len(tasks)} tasks"
