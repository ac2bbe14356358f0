"""``scaling``: loss = a * x^-b per family over the pretrained sizes (and seeds), on the matched held-out loss."""
from __future__ import annotations

from .context import EvalContext


def scaling(ctx: EvalContext) -> str:
    """Fits against training FLOPs, parameters and non-embedding parameters from ``perplexity.json`` and each
    run's checkpoint: every run is a point (with seeds, sizes x seeds points per family, so the interval of b
    counts the seed-to-seed scatter). ``difference``: RedLLM's b - DecLLM's b with a Welch interval
    (``eval.stats.slope_difference``; the study: 0.24 - 0.20 > 0 vs FLOPs). Writes ``scaling.json``,
    ``scaling.md`` and ``scaling.png``."""
    from ...eval import plots
    from ...eval.scaling import PowerLawFit, fit_power_law, format_scaling, run_point, scaling_fits
    from ...eval.stats import slope_difference

    ev = ctx.settings("scaling")
    conf = float(ev.get("confidence", 0.95))
    ppl = ctx.results("perplexity.json")
    points = []
    for run in ctx.pretrained:
        pt = run_point(run.ckpt)
        m = ppl["models"][run.label]
        pt.update({"label": run.label, "size": run.size.name, "seed": run.seed, "val_loss_training": pt["loss"],
                   "loss": m["matched_loss"]["all"], "non_embedding_parameters": m.get("non_embedding_parameters")})
        points.append(pt)
    res = scaling_fits(points, conf, loss_name="held-out loss (2nd half given 1st, both families)")
    for fam, entry in res["families"].items():
        pts = [p for p in points if p["family"] == fam and not p.get("bidirectional_prefix")
               and p.get("non_embedding_parameters")]
        xs = [p["non_embedding_parameters"] for p in pts]
        entry["non_embedding_parameters"] = (fit_power_law(xs, [p["loss"] for p in pts], conf).to_dict()
                                             if len(set(xs)) >= 2 else None)
    fams = res["families"]
    res["difference"] = {}
    if "redllm" in fams and "decllm" in fams:
        for key in ("flops", "parameters", "non_embedding_parameters"):
            red, dec = fams["redllm"].get(key), fams["decllm"].get(key)
            if red and dec:
                fit = [PowerLawFit(**{**d, "b_ci": tuple(d["b_ci"]) if d["b_ci"] else None,
                                      "a_ci": tuple(d["a_ci"]) if d["a_ci"] else None}) for d in (red, dec)]
                res["difference"][key] = slope_difference(fit[0], fit[1], conf).to_dict()
    ctx.write("scaling.json", res)
    ctx.plot("scaling", lambda: plots.plot_scaling(res, ctx.out))
    (ctx.out / "scaling.md").write_text(format_scaling(res))
    parts = [f"{f}: b={e['flops']['b']:.3f}" for f, e in res["families"].items() if e.get("flops")]
    return ", ".join(parts) or "no fit"
