"""``eval/efficiency``: measured inference cost per size and family; ``eval/quality_flops``: quality
against analytic inference FLOPs per example."""
from __future__ import annotations

import math

from .context import EvalContext


def efficiency(ctx: EvalContext) -> str:
    """Prefill/decode latency, tokens/s, KV cache per model. Writes ``efficiency.json`` and its plots.
    ``presets: [study]`` (or no ``presets``) measures the study's own sizes, randomly initialized."""
    from ...eval import plots
    from ...eval.efficiency import efficiency_benchmark

    ev = dict(ctx.settings("efficiency"))
    sizes = ctx.cfg["_sizes"]
    entries = ev.pop("presets", None) or [{"name": s.name, "preset": s.preset, "overrides": s.overrides}
                                          for s in sizes]
    entries = [{"name": s.name, "preset": s.preset, "overrides": s.overrides} if e == "study" else e
               for e in entries for s in (sizes if e == "study" else [None])]
    res = efficiency_benchmark(entries, batch_sizes=ev.get("batch_sizes", [1, 4, 16]),
                               prompt_len=int(ev.get("prompt_len", 128)), new_tokens=int(ev.get("new_tokens", 32)),
                               repeats=int(ev.get("repeats", 3)), device=ctx.device,
                               dtype=ev.get("dtype", "float32"), compile=bool(ev.get("compile", False)),
                               log=ctx.log)
    ctx.write("efficiency.json", res)
    ctx.plot("efficiency", lambda: plots.plot_efficiency(res, ctx.out))
    return f"{len(res['models'])} models"


def quality_flops(ctx: EvalContext) -> str:
    """Quality vs analytic inference FLOPs per example (prompt + generation of a fixed size), from
    ``perplexity.json`` (and ``instruct_eval.json`` when there is one). Writes ``quality_flops.json``."""
    from ...eval import plots
    from ...eval.efficiency import quality_points

    ev = ctx.settings("quality_flops")
    p_len, n_new = int(ev.get("prompt_len", 256)), int(ev.get("new_tokens", 64))
    ppl = ctx.results("perplexity.json")
    pts = quality_points([{"label": k, "config": m["config"], "value": math.exp(m["matched_loss"]["all"])}
                          for k, m in ppl["models"].items()], p_len, n_new)
    res = {"kind": "lightning_redllm.quality_flops/1", "prompt_len": p_len, "new_tokens": n_new,
           "pretrained": pts, "pretrained_metric": "held-out perplexity, same tokens for both families"}
    if (ctx.out / "instruct_eval.json").exists():
        ins = ctx.results("instruct_eval.json")
        res["instruct"] = quality_points([{"label": k, "config": m["config"], "value": math.exp(m["held_out_loss"])}
                                          for k, m in ins["models"].items() if m.get("held_out_loss") is not None],
                                         p_len, n_new)
        res["instruct_metric"] = "held-out-task target perplexity (tasks never trained on)"
    ctx.write("quality_flops.json", res)

    def draw() -> None:
        w = f"prompt {res['prompt_len']} + {res['new_tokens']} new tokens"
        plots.plot_quality_vs_flops(res["pretrained"], ctx.out, ylabel="held-out perplexity",
                                    name="quality_vs_flops_pretrained",
                                    title=f"pretrained: quality vs inference FLOPs ({w})")
        if res.get("instruct"):
            plots.plot_quality_vs_flops(res["instruct"], ctx.out, ylabel="held-out-task perplexity",
                                        name="quality_vs_flops_instruct",
                                        title=f"instruction-tuned, unseen tasks ({w})")

    ctx.plot("quality_flops", draw)
    return f"{len(pts)} pretrained points"
