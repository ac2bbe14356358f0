"""``eval/instruct``: target loss per task of every instruction-tuned model, on seen and held-out tasks."""
from __future__ import annotations

from ..scoring import option_accuracy, options_of, read_flan, score_pairs
from .context import EvalContext


def instruct(ctx: EvalContext) -> str:
    """Per-task target loss (seen tasks: validation split; held-out tasks: every example of
    both splits, never trained on) and the held-out multiple-choice task's accuracy.
    Writes ``instruct_eval.json``."""
    ins = ctx.cfg["instruct"]
    ev = ctx.settings("instruct")
    held = set(ins.get("held_out_tasks") or [])
    max_ex = int(ev.get("max_examples", 60))
    rows_val = read_flan("val", ins.get("corpus"))
    rows_train = read_flan("train", ins.get("corpus"))
    tasks: dict[str, list[dict]] = {}
    for r in rows_val + [r for r in rows_train if r["task_name"] in held]:
        tasks.setdefault(r["task_name"], []).append(r)
    tasks = {t: rs[:max_ex] for t, rs in sorted(tasks.items())}
    out: dict = {"kind": "lightning_redllm.study_instruct/1", "held_out_tasks": sorted(held), "models": {}}
    for label, variant, size, ckpt in ctx.tuned:
        model, tok, cfg = ctx.load(ckpt)
        entry = {"variant": variant, "size": size.name, "config": cfg.to_dict(), "tasks": {}}
        for task, rows in tasks.items():
            ids = [(tok.encode(r["inputs"])[:256], tok.encode(r["targets"])[:127] + [tok.eos_id]) for r in rows]
            nll = score_pairs(model, tok, ids)
            entry["tasks"][task] = {"examples": len(rows), "held_out": task in held,
                                    "loss": sum(a for a, _ in nll) / sum(n for _, n in nll)}
            mc = [r for r in rows if "OPTIONS:" in r["inputs"]]
            if mc:
                entry["tasks"][task]["mc_accuracy"] = option_accuracy(model, tok, mc)
                entry["tasks"][task]["mc_chance"] = sum(1 / len(options_of(r["inputs"])) for r in mc) / len(mc)
        seen = [v["loss"] for v in entry["tasks"].values() if not v["held_out"]]
        unseen = [v["loss"] for v in entry["tasks"].values() if v["held_out"]]
        entry["seen_loss"] = sum(seen) / len(seen) if seen else None
        entry["held_out_loss"] = sum(unseen) / len(unseen) if unseen else None
        out["models"][label] = entry
        ctx.log(f"  {label}: seen-task loss {entry['seen_loss']:.3f}, held-out-task loss "
                f"{entry['held_out_loss'] if entry['held_out_loss'] is None else round(entry['held_out_loss'], 3)}")
    ctx.write("instruct_eval.json", out)
    return f"{len(out['models'])} tuned models, {len(tasks)} tasks"
