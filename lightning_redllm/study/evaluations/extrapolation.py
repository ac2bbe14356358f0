"""``eval/extrapolation``: perplexity vs context length past the training length, several prefix lengths."""
from __future__ import annotations

from .context import EvalContext


def extrapolation(ctx: EvalContext) -> str:
    """Writes ``extrapolation.json``, ``extrapolation.md`` and the ``extrapolation_*.png`` plots."""
    from ...data.shards import bundled_shards
    from ...eval import plots
    from ...eval.extrapolation import default_lengths, extrapolation_sweep, format_extrapolation

    ev = ctx.settings("extrapolation")
    sizes = set(ev.get("sizes") or [s.name for s in ctx.cfg["_sizes"]])
    train_len = ctx.train_length()
    lengths = ev.get("lengths") or default_lengths(train_len, factor=int(ev.get("factor", 8)))
    models, tok = {}, None
    for label, fam, size, ckpt in ctx.pretrained:
        if size.name in sizes:
            models[label], tok, _ = ctx.load(ckpt)
    res = extrapolation_sweep(models, ev.get("shards") or bundled_shards("pretrain", "val"), bos_id=tok.bos_id,
                              lengths=lengths, prefix_lengths=ev.get("prefix_lengths") or [1, "half"],
                              tokens_per_source=int(ev.get("tokens_per_source") or 2 * max(lengths)),
                              batch_size=int(ev.get("batch_size", 4)), train_length=train_len,
                              tokenizer_fingerprint=tok.fingerprint, log=ctx.log)
    ctx.write("extrapolation.json", res)
    ctx.plot("extrapolation", lambda: plots.plot_extrapolation(res, ctx.out))
    (ctx.out / "extrapolation.md").write_text(format_extrapolation(res))
    return f"{len(models)} models x {len(res['prefix_lengths'])} prefixes x {len(res['lengths'])} lengths"
