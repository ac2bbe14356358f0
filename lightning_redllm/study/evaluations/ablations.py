"""``eval/ablations``: the study's two ablations, paired per seed.

* ``attn_out_norm``: RedLLM trained with and without the attention-output norm at the ablation's
  settings (the study's learning rate), once per seed. Per run: the loss curves, whether it diverged
  (:func:`divergence`) and its final validation loss; then without - with paired per seed (the study:
  without the norm training is unstable, so the difference should be > 0 or the runs diverge).
* ``biattn``: DecLLM + BiAttn vs DecLLM after tuning, from ``instruct_eval.json`` (paired there).
"""
from __future__ import annotations

import json
import math
from typing import Mapping, Optional

from ..config import ABLATIONS
from ..paired import over_seeds
from ..plan import ablation_runs
from ..report import run_curves
from .context import EvalContext

KIND = "lightning_redllm.study_ablations/1"
CONTROL, TREATED = list(ABLATIONS["attn_out_norm"])  # redllm_out_norm, redllm_no_out_norm


def divergence(train_loss: Mapping[int, float], *, skipped_steps: int = 0, stopped_nonfinite: bool = False,
               window: int = 3) -> dict:
    """Did a run diverge? Yes when its non-finite guard stopped it, when any logged training loss is
    non-finite, when it skipped steps (non-finite loss or gradients), or when it ends above where it
    started: the mean of the last ``window`` logged training losses above the first logged one.
    ``max_rise``: the largest rise of the loss above its running minimum (nats), a spike measure."""
    steps = sorted(train_loss)
    values = [float(train_loss[s]) for s in steps]
    reasons = []
    if stopped_nonfinite:
        reasons.append("stopped by the non-finite-loss guard")
    if any(not math.isfinite(v) for v in values):
        reasons.append("non-finite training loss logged")
    if skipped_steps > 0:
        reasons.append(f"{skipped_steps} skipped step(s)")
    finite = [v for v in values if math.isfinite(v)]
    start = finite[0] if finite else None
    end = sum(finite[-window:]) / len(finite[-window:]) if finite else None
    if start is not None and len(finite) > window and end > start:
        reasons.append(f"ends above its start ({end:.3f} > {start:.3f})")
    rise, low = 0.0, math.inf
    for v in finite:
        low = min(low, v)
        rise = max(rise, v - low)
    return {"diverged": bool(reasons), "reasons": reasons, "start": start, "end": end, "max_rise": rise,
            "logged_points": len(values)}


def _run_record(run, curves: dict, outcome: Optional[dict], skipped: int) -> dict:
    stopped = bool((outcome or {}).get("stopped_nonfinite"))
    div = divergence(curves.get("train/loss") or {}, skipped_steps=skipped, stopped_nonfinite=stopped)
    val = curves.get("val/loss") or {}
    last = val[max(val)] if val else None
    final = None if stopped or last is None or not math.isfinite(last) else last
    return {"name": run.name, "size": run.size.name, "seed": run.seed, "stopped_nonfinite": stopped,
            "skipped_steps": skipped, "final_val_loss": final, "last_logged_val_loss": last, **div}


def _skipped_steps(run) -> int:
    from ...reliability import load_torch_file

    for ckpt in (run.ckpt, *sorted(run.root.glob("nonfinite-step*.ckpt"))[-1:]):
        if ckpt.exists():
            counters = load_torch_file(ckpt, mmap=True).get("module_counters") or {}
            return int(counters.get("skipped_steps", 0))
    return 0


def ablations(ctx: EvalContext) -> str:
    """Writes ``ablations.json`` and ``ablation_attn_out_norm.png`` (training loss per arm and seed)."""
    out: dict = {"kind": KIND, "attn_out_norm": None, "biattn": None}
    runs = ablation_runs(ctx.cfg)
    summary = []
    if runs:
        spec = ctx.cfg["ablations"]["attn_out_norm"]
        records, curves = {}, {}
        for run in runs:
            c = run_curves(run.root, keys=("train/loss", "val/loss"))
            outcome_path = run.root / "outcome.json"
            outcome = json.loads(outcome_path.read_text()) if outcome_path.exists() else None
            records[run.label] = _run_record(run, c, outcome, _skipped_steps(run))
            curves[run.label] = {k: {str(s): v for s, v in c[k].items()} for k in c}
        table = over_seeds(records, {"final_val_loss": "final validation loss (own objective), finished runs"},
                           [{"metric": "final_val_loss", "a": TREATED, "b": CONTROL, "expected_sign": 1,
                             "claim": "without the attention-output norm RedLLM ends worse (or diverges)"}])
        seeds = sorted({r["seed"] for r in records.values()}, key=lambda s: (s is None, s or 0))
        diverged = {arm: sum(r["diverged"] for r in records.values() if r["name"] == arm) for arm in (CONTROL, TREATED)}
        out["attn_out_norm"] = {"size": spec["size"], "args": spec["args"], "seeds": seeds, "runs": records,
                                "curves": curves, "diverged": diverged, "over_seeds": table}
        summary.append(f"attn_out_norm: diverged {diverged[TREATED]}/{len(seeds)} without, "
                       f"{diverged[CONTROL]}/{len(seeds)} with the norm")
        ctx.plot("ablation", lambda: _plot(records, curves, ctx.out))
    if (ctx.out / "instruct_eval.json").exists():
        ins = ctx.results("instruct_eval.json")
        pairs = [p for p in (ins.get("over_seeds") or {}).get("paired", [])
                 if p["a"] == "decllm_biattn" and p["b"] == "decllm"]
        if pairs:
            out["biattn"] = {"paired": pairs}
            summary.append(f"biattn: {len(pairs)} paired comparison(s)")
    ctx.write("ablations.json", out)
    return "; ".join(summary) or "no ablation runs or BiAttn variant"


def _plot(records: dict, curves: dict, out) -> None:
    from ...eval.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = {CONTROL: "tab:blue", TREATED: "tab:red"}
    for label, r in sorted(records.items()):
        pts = curves[label].get("train/loss") or {}
        steps = sorted(pts, key=int)
        ax.plot([int(s) for s in steps], [pts[s] for s in steps], color=colors[r["name"]], alpha=0.8,
                label=label + (" (diverged)" if r["diverged"] else ""))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train/loss (own objective)")
    ax.set_title("RedLLM with / without the attention-output norm")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, out / "ablation_attn_out_norm.png")
