"""``eval/lm_eval``: lm-eval-harness tasks on the pretrained and instruction-tuned models (skipped, and
recorded as skipped, when lm_eval is not installed)."""
from __future__ import annotations

import time

from .context import EvalContext

KIND = "lightning_redllm.study_lm_eval/1"


def lm_eval(ctx: EvalContext) -> str:
    """Writes ``lm_eval.json``: per model (``pretrain/<label>``, ``instruct/<label>``) and shot count, the
    task results. ``models`` (default ``all``) selects by label or size name."""
    ev = ctx.settings("lm_eval")
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        ctx.log("  eval/lm_eval skipped: lm_eval is not installed (pip install 'lightning_redllm[eval]')")
        ctx.write("lm_eval.json", {"kind": KIND, "skipped": "lm_eval is not installed"})
        return "skipped: lm_eval not installed"
    from ...eval.lm_eval_adapter import BUNDLED_TASKS, run_lm_eval

    tasks = list(ev.get("tasks") or BUNDLED_TASKS)
    which = ev.get("models", "all")
    # labels: pretrain/<family>-<size>, instruct/<variant>-<size> (a pretrained and a tuned RedLLM share a name)
    models = [(f"{kind}/{m.label}", m) for kind, ms in (("pretrain", ctx.pretrained), ("instruct", ctx.tuned))
              for m in ms if which == "all" or m.label in which or m.group in which or m.size.name in which]
    out: dict = {"kind": KIND, "tasks": tasks, "limit": ev.get("limit"), "models": {}}
    for label, run in models:
        ckpt = run.ckpt
        out["models"][label] = {"family": run.name, "size": run.size.name, "seed": run.seed, "shots": {}}
        for shots in ev.get("num_fewshot", [0]):
            t0 = time.monotonic()
            res = run_lm_eval(str(ckpt), tasks, int(shots), limit=ev.get("limit"),
                              batch_size=int(ev.get("batch_size", 8)), device=ctx.device)
            out["models"][label]["shots"][str(shots)] = res.get("results", {})
            ctx.log(f"  {label} {shots}-shot: {short_results(res.get('results', {}))} "
                    f"({time.monotonic() - t0:.0f} s)")
    ctx.write("lm_eval.json", out)
    return f"{len(out['models'])} models x {len(tasks)} tasks"


def short_results(results: dict) -> str:
    """``task metric=value`` of each task's first non-stderr number, for the log."""
    parts = []
    for task, metrics in results.items():
        nums = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and "stderr" not in k]
        if nums:
            k, v = nums[0]
            parts.append(f"{task} {k.split(',')[0]}={v:.3f}")
    return ", ".join(parts) or "no results"
