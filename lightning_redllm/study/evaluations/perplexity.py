"""``eval/perplexity``: held-out loss per source of every pretrained model, with each family's own
objective and on the same tokens for both families (second half of each sequence given the first)."""
from __future__ import annotations

import math

from ..paired import over_seeds
from .context import EvalContext

MATCHED = "held-out loss, 2nd half of each sequence given the 1st (the same tokens for both families)"


def perplexity(ctx: EvalContext) -> str:
    """Per-source held-out loss with each family's own objective, and the same tokens for both
    (second half of each training-length sequence given the first half). Writes ``perplexity.json``:
    per model, and over seeds (``over_seeds``: mean and t-interval per family and size, RedLLM - DecLLM
    paired per seed)."""
    from ...config import non_embedding_parameters, num_parameters
    from ...data.shards import bundled_shards
    from ...eval.perplexity import documents_by_source, evaluate_perplexity, pack_source, score_continuations
    from ...eval.scaling import last_metric

    ev = ctx.settings("perplexity")
    shards = ev.get("shards") or bundled_shards("pretrain", "val")
    length = int(ev.get("length") or ctx.train_length())
    max_seq = int(ev.get("max_sequences", 32))
    out: dict = {"kind": "lightning_redllm.study_perplexity/1", "length": length, "prefix_len": length // 2,
                 "shards": str(shards), "models": {}}
    docs = None
    for run in ctx.pretrained:
        label, fam, size, ckpt = run.label, run.name, run.size, run.ckpt
        model, tok, cfg = ctx.load(ckpt)
        own = evaluate_perplexity(model, shards, bos_id=tok.bos_id, lengths=[length], batch_size=8,
                                  max_sequences=max_seq, tokenizer_fingerprint=tok.fingerprint)
        docs = docs or documents_by_source(shards, tok.fingerprint)
        matched, tot = {}, [0.0, 0]
        for src in sorted(docs):
            seqs = pack_source(docs[src], length, max_seq)
            if seqs is None:
                continue
            nll, n, _ = score_continuations(model, seqs, length // 2, tok.bos_id, 8)
            matched[src] = nll / n
            tot = [tot[0] + nll, tot[1] + n]
        matched["all"] = tot[0] / tot[1]
        out["models"][label] = {"family": fam, "name": fam, "size": size.name, "seed": run.seed,
                                "parameters": num_parameters(cfg), "non_embedding_parameters": non_embedding_parameters(cfg),
                                "config": cfg.to_dict(), "own_objective": own["lengths"][length],
                                "matched_loss": matched, "val_loss_training": last_metric(ckpt.parent.parent, "val/loss")}
        ctx.log(f"  {label}: matched held-out loss {matched['all']:.3f} (ppl {math.exp(matched['all']):.1f})")
    out["over_seeds"] = over_seeds(out["models"], {"matched_loss.all": MATCHED},
                                   [{"metric": "matched_loss.all", "a": "redllm", "b": "decllm", "expected_sign": None,
                                     "claim": "RedLLM - DecLLM at equal size (the study compares at equal FLOPs: "
                                              "see the findings)"}])
    ctx.write("perplexity.json", out)
    best = min(out["models"].items(), key=lambda kv: kv[1]["matched_loss"]["all"])
    return f"best matched loss {best[1]['matched_loss']['all']:.3f} ({best[0]})"
