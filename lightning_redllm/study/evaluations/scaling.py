"""``scaling``: loss = a * x^-b per family over the pretrained sizes, on the matched held-out loss."""
from __future__ import annotations

from .context import EvalContext


def scaling(ctx: EvalContext) -> str:
    """Fits against training FLOPs and parameters from ``perplexity.json`` and each run's checkpoint.
    Writes ``scaling.json``, ``scaling.md`` and ``scaling.png``."""
    from ...eval import plots
    from ...eval.scaling import format_scaling, run_point, scaling_fits

    ev = ctx.settings("scaling")
    ppl = ctx.results("perplexity.json")
    points = []
    for label, fam, size, ckpt in ctx.pretrained:
        pt = run_point(ckpt)
        pt.update({"label": label, "size": size.name, "val_loss_training": pt["loss"],
                   "loss": ppl["models"][label]["matched_loss"]["all"]})
        points.append(pt)
    res = scaling_fits(points, float(ev.get("confidence", 0.95)),
                       loss_name="held-out loss (2nd half given 1st, both families)")
    ctx.write("scaling.json", res)
    ctx.plot("scaling", lambda: plots.plot_scaling(res, ctx.out))
    (ctx.out / "scaling.md").write_text(format_scaling(res))
    parts = [f"{f}: b={e['flops']['b']:.3f}" for f, e in res["families"].items() if e.get("flops")]
    return ", ".join(parts) or "no fit"
