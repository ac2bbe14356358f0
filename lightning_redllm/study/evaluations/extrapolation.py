"""``eval/extrapolation``: perplexity vs context length past the training length, several prefix lengths."""
from __future__ import annotations

from ..paired import over_seeds
from .context import EvalContext


def extrapolation(ctx: EvalContext) -> str:
    """Writes ``extrapolation.json``, ``extrapolation.md`` and the ``extrapolation_*.png`` plots. ``sizes``
    (default all) selects the sizes. Over seeds: the rise of the loss from the training length to each
    longer length, ``loss(k x train) - loss(train)`` = log PPL(k x train)/PPL(train), per prefix length,
    and RedLLM - DecLLM of that rise paired per seed (the study: RedLLM rises less, the sign -1)."""
    from ...data.shards import bundled_shards
    from ...eval import plots
    from ...eval.extrapolation import default_lengths, extrapolation_sweep, format_extrapolation, prefix_label

    ev = ctx.settings("extrapolation")
    sizes = set(ev.get("sizes") or [s.name for s in ctx.cfg["_sizes"]])
    train_len = ctx.train_length()
    lengths = ev.get("lengths") or default_lengths(train_len, factor=int(ev.get("factor", 8)))
    models, runs, tok = {}, {}, None
    for run in ctx.pretrained:
        if run.size.name in sizes:
            models[run.label], tok, _ = ctx.load(run.ckpt)
            runs[run.label] = {"name": run.name, "size": run.size.name, "seed": run.seed}
    res = extrapolation_sweep(models, ev.get("shards") or bundled_shards("pretrain", "val"), bos_id=tok.bos_id,
                              lengths=lengths, prefix_lengths=ev.get("prefix_lengths") or [1, "half"],
                              tokens_per_source=int(ev.get("tokens_per_source") or 2 * max(lengths)),
                              batch_size=int(ev.get("batch_size", 4)), train_length=train_len,
                              tokenizer_fingerprint=tok.fingerprint, log=ctx.log)
    entries, metrics, pairs = {}, {}, []
    for label, meta in runs.items():
        rise: dict = {}
        for pt in res["models"][label]["points"]:
            rise.setdefault(prefix_label(pt["prefix"]), {})[pt["length"]] = pt["loss"]
        entries[label] = {**meta, "rise": {p: {f"x{n // train_len}": by[n] - by[train_len] for n in by
                                               if n > train_len and n % train_len == 0}
                                           for p, by in rise.items() if train_len in by}}
    for label, e in entries.items():
        for p, by in e["rise"].items():
            for k in by:
                metric = f"rise.{p}.{k}"
                metrics[metric] = f"loss({k[1:]} x {train_len}) - loss({train_len}), prefix {p}"
    for metric in metrics:
        pairs.append({"metric": metric, "a": "redllm", "b": "decllm", "expected_sign": -1,
                      "claim": "RedLLM's perplexity rises less past the training length"})
    res["runs"] = runs
    res["rise"] = {label: e["rise"] for label, e in entries.items()}
    res["over_seeds"] = over_seeds(entries, metrics, pairs)
    ctx.write("extrapolation.json", res)
    ctx.plot("extrapolation", lambda: plots.plot_extrapolation(res, ctx.out))
    (ctx.out / "extrapolation.md").write_text(format_extrapolation(res))
    return f"{len(models)} models x {len(res['prefix_lengths'])} prefixes x {len(res['lengths'])} lengths"
