"""``eval/zero_shot``: the pretrained models, before any tuning, on the instruction tasks (zero-shot)."""
from __future__ import annotations

from ..paired import over_seeds
from ..scoring import evaluation_tasks, task_scores
from .context import EvalContext

PAIRS = [{"metric": "all_loss", "a": "redllm", "b": "decllm", "expected_sign": 1,
          "claim": "before tuning DecLLM is ahead zero-shot (RedLLM's loss higher)"},
         {"metric": "mc_accuracy", "a": "redllm", "b": "decllm", "expected_sign": -1,
          "claim": "before tuning DecLLM is ahead zero-shot (RedLLM's accuracy lower)"}]


def zero_shot(ctx: EvalContext) -> str:
    """Target loss per task of every pretrained model (``sizes``: those sizes only, default all), scored the
    way each family would be tuned (RedLLM: inputs to the encoder; DecLLM: inputs then targets, causal),
    and the multiple-choice task's accuracy. No task was trained on. Writes ``zero_shot.json``."""
    ins = ctx.cfg["instruct"]
    ev = ctx.settings("zero_shot")
    sizes = set(ev.get("sizes") or [s.name for s in ctx.cfg["_sizes"]])
    tasks, held = evaluation_tasks(ins, int(ev.get("max_examples", 60)))
    out: dict = {"kind": "lightning_redllm.study_zero_shot/1", "tasks": sorted(tasks), "models": {}}
    for run in ctx.pretrained:
        if run.size.name not in sizes:
            continue
        model, tok, cfg = ctx.load(run.ckpt)
        entry = {"family": run.name, "name": run.name, "size": run.size.name, "seed": run.seed,
                 **task_scores(model, tok, tasks, held)}
        out["models"][run.label] = entry
        ctx.log(f"  {run.label}: zero-shot task loss {entry['all_loss']:.3f}")
    out["over_seeds"] = over_seeds(out["models"], {"all_loss": "zero-shot target loss, mean over the tasks",
                                                   "mc_accuracy": "zero-shot multiple-choice accuracy"}, PAIRS)
    ctx.write("zero_shot.json", out)
    return f"{len(out['models'])} pretrained models, {len(tasks)} tasks"
