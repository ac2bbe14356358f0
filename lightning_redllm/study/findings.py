"""The study's findings, one by one, against what a study measured: an estimate with its interval over
seeds and a verdict.

Each finding is a difference whose sign the study (arXiv 2510.26622) states; the verdict follows
``eval.stats.verdict``: "reproduced" only when the 95% interval excludes zero in the study's
direction, "opposite" when it excludes zero the other way, "not resolved" otherwise (one seed gives
no interval, so "not resolved"). A finding whose evaluation is not in the study says "no data".
Where a finding is measured at several sizes, each seed's difference is averaged over the sizes and
the interval is over seeds (``paired.pool_sizes``); the detail lists every size.

Pure: :func:`study_findings` takes the evaluations' JSON (as written under the study's folder) and
returns ``findings.json``'s content; :func:`format_findings` renders it as a markdown table.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

from ..eval.stats import mean_interval, verdict
from .config import ABLATIONS
from .paired import as_interval, fmt_interval, interval_dict, pool_sizes

KIND = "lightning_redllm.study_findings/1"
NO_DATA = "no data"


def _finding(fid: str, claim: str, measure: str, *, estimate: Optional[dict] = None, sign: int = 1,
             detail: str = "", verdict_: Optional[str] = None, missing: Optional[str] = None) -> dict:
    if missing:
        return {"id": fid, "claim": claim, "measure": measure, "estimate": None, "expected_sign": sign,
                "verdict": NO_DATA, "detail": missing}
    v = verdict_ or (verdict(as_interval(estimate), sign) if estimate else "not resolved")
    if estimate and estimate.get("lo") is None:
        detail = (detail + "; " if detail else "") + f"{estimate['n']} seed(s): no interval"
    return {"id": fid, "claim": claim, "measure": measure, "estimate": estimate, "expected_sign": sign,
            "verdict": v, "detail": detail}


def _sizes_detail(paired: list, metric: str, a: str, b: str) -> str:
    rows = [p for p in paired if p["metric"] == metric and p["a"] == a and p["b"] == b]
    return "; ".join(f"{p['size']}: {fmt_interval(p)}" for p in rows)


def loss_at_equal_flops(points: list[dict], confidence: float = 0.95) -> Optional[dict]:
    """Per seed: loss = a * C^-b fitted per family over that seed's sizes, both evaluated at the geometric
    middle of the FLOPs range the two families share (of all their points when they share none); RedLLM -
    DecLLM per seed, with its t-interval over seeds. None without two sizes per family in some seed."""
    from ..eval.scaling import fit_power_law

    by_seed: dict = {}
    for p in points:
        if p.get("bidirectional_prefix") or p.get("loss") is None:
            continue
        by_seed.setdefault(p.get("seed"), {}).setdefault(p["family"], []).append(p)
    diffs, seeds, at = [], [], []
    for seed, fams in sorted(by_seed.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
        red, dec = fams.get("redllm", []), fams.get("decllm", [])
        if len({p["flops"] for p in red}) < 2 or len({p["flops"] for p in dec}) < 2:
            continue
        lo = max(min(p["flops"] for p in red), min(p["flops"] for p in dec))
        hi = min(max(p["flops"] for p in red), max(p["flops"] for p in dec))
        if lo > hi:  # no shared range: the middle of all points (an extrapolation for both fits)
            allc = [p["flops"] for p in red + dec]
            lo, hi = min(allc), max(allc)
        c = math.sqrt(lo * hi)
        fits = [fit_power_law([p["flops"] for p in ps], [p["loss"] for p in ps], confidence) for ps in (red, dec)]
        diffs.append(float(fits[0].predict(c) - fits[1].predict(c)))
        seeds.append(seed)
        at.append(c)
    if not diffs:
        return None
    return {"seeds": seeds, "differences": diffs, "flops": at, **interval_dict(mean_interval(diffs, confidence))}


def study_findings(results: Mapping[str, Optional[dict]]) -> dict:
    """``results``: evaluation -> its JSON or None (``perplexity``, ``scaling``, ``zero_shot``, ``extrapolation``,
    ``instruct``, ``ablations``)."""
    out = []
    sc = results.get("scaling")
    claim = "Pretraining: DecLLM is more compute-optimal (lower loss at equal training FLOPs)"
    measure = "RedLLM - DecLLM held-out loss (same tokens) at equal training FLOPs, per-seed power-law fits"
    est = loss_at_equal_flops(sc["points"]) if sc else None
    if est is None:
        out.append(_finding("loss_per_flop", claim, measure,
                            missing="no scaling fits (eval/perplexity + scaling with >= 2 sizes per family)"))
    else:
        out.append(_finding("loss_per_flop", claim, measure, estimate=est, sign=1,
                            detail=f"at {', '.join(f'{c:.3g}' for c in sorted(set(est['flops'])))} FLOPs"))

    claim = "Loss falls as a power law of training compute: b > 0 for both families"
    measure = "b of loss = a C^-b per family (all sizes and seeds)"
    fams = (sc or {}).get("families") or {}
    if not sc or not all((fams.get(f) or {}).get("flops") for f in ("redllm", "decllm")):
        out.append(_finding("scaling_b", claim, measure, missing="no scaling fit for both families"))
    else:
        ivs = {}
        for f in ("redllm", "decllm"):
            fit = fams[f]["flops"]
            ci = fit.get("b_ci")
            ivs[f] = {"mean": fit["b"], "lo": ci[0] if ci else None, "hi": ci[1] if ci else None,
                      "se": fit.get("b_se"), "n": fit["n"], "dof": fit["n"] - 2, "confidence": fit["confidence"]}
        each = {f: verdict(as_interval(iv), 1) for f, iv in ivs.items()}
        v = ("reproduced" if all(x == "reproduced" for x in each.values())
             else "opposite" if any(x == "opposite" for x in each.values()) else "not resolved")
        out.append(_finding("scaling_b", claim, measure, estimate=None, sign=1, verdict_=v,
                            detail="; ".join(f"{f}: b = {fmt_interval(iv)} ({each[f]})" for f, iv in ivs.items())))
        out[-1]["per_family"] = ivs

    claim = "RedLLM's compute exponent is larger (the study: b = 0.24 vs 0.20 vs FLOPs)"
    measure = "b(RedLLM) - b(DecLLM) vs training FLOPs, Welch interval"
    diff = ((sc or {}).get("difference") or {}).get("flops")
    if not diff:
        out.append(_finding("scaling_b_difference", claim, measure, missing="no scaling fit for both families"))
    else:
        out.append(_finding("scaling_b_difference", claim, measure, estimate=diff, sign=1,
                            detail="vs parameters: " + fmt_interval(((sc or {}).get("difference") or {}).get("parameters"))))

    out.append(_paired_finding(results.get("zero_shot"), "zero_shot",
                               "Before instruction tuning DecLLM is ahead zero-/few-shot",
                               "RedLLM - DecLLM zero-shot target loss on the instruction tasks, pretrained models",
                               "all_loss", "redllm", "decllm", 1, "eval/zero_shot not in this study"))
    out.append(_extrapolation_finding(results.get("extrapolation")))
    out.append(_paired_finding(results.get("instruct"), "unseen_after_tuning",
                               "After instruction tuning RedLLM matches or beats DecLLM on unseen tasks",
                               "RedLLM - DecLLM target loss on the held-out tasks, tuned models",
                               "held_out_loss", "redllm", "decllm", -1, "eval/instruct with RedLLM and DecLLM not in this study"))
    out.append(_paired_finding(results.get("instruct"), "biattn",
                               "Bidirectional attention over the input (DecLLM + BiAttn) improves tuned DecLLM",
                               "DecLLM+BiAttn - DecLLM target loss on the held-out tasks, tuned models",
                               "held_out_loss", "decllm_biattn", "decllm", -1,
                               "eval/instruct with decllm and decllm_biattn not in this study"))
    out.append(_attn_norm_finding(results.get("ablations")))
    return {"kind": KIND, "confidence": 0.95, "findings": out}


def _paired_finding(res: Optional[dict], fid: str, claim: str, measure: str, metric: str, a: str, b: str,
                    sign: int, missing: str) -> dict:
    paired = ((res or {}).get("over_seeds") or {}).get("paired") or []
    est = pool_sizes(paired, metric, a, b)
    if est is None:
        return _finding(fid, claim, measure, missing=missing)
    detail = "per size: " + _sizes_detail(paired, metric, a, b) if len(est["sizes"]) > 1 else f"size {est['sizes'][0]}"
    return _finding(fid, claim, measure, estimate=est, sign=sign, detail=detail)


def _extrapolation_finding(res: Optional[dict]) -> dict:
    claim = "RedLLM extrapolates to longer contexts: DecLLM's perplexity blows up past ~2x the training length"
    paired = ((res or {}).get("over_seeds") or {}).get("paired") or []
    if not paired:
        return _finding("extrapolation", claim, "RedLLM - DecLLM rise of the loss from the training length",
                        missing="eval/extrapolation with both families not in this study")
    largest = paired[-1]["size"]  # the pairs follow the study's sizes, smallest first
    rows = [p for p in paired if p["size"] == largest]
    prefixes = []
    for p in rows:
        pre = p["metric"].split(".")[1]
        if pre not in prefixes:
            prefixes.append(pre)
    factor = lambda p: int(p["metric"].rsplit(".x", 1)[1])  # noqa: E731
    spec = lambda pre: pre[1:].lstrip("-")  # noqa: E731  (prefix_label: p1, p64, p-half, p-1of4)
    first = [p for p in rows if p["metric"].split(".")[1] == prefixes[0]]
    top = max(first, key=factor)
    detail = "; ".join(f"prefix {spec(pre)} x{factor(p)}: {fmt_interval(p)}" for pre in prefixes
                       for p in sorted((q for q in rows if q["metric"].split(".")[1] == pre), key=factor))
    measure = (f"RedLLM - DecLLM of loss(x{factor(top)}) - loss(train length), prefix {spec(prefixes[0])}, "
               f"size {largest}")
    return _finding("extrapolation", claim, measure, estimate={k: top[k] for k in
                                                               ("mean", "lo", "hi", "se", "n", "dof", "confidence")},
                    sign=-1, detail=detail)


def _attn_norm_finding(res: Optional[dict]) -> dict:
    claim = "RedLLM needs the attention-output norm for stable training"
    measure = "without - with the norm: final validation loss (finished runs), and divergences"
    ab = (res or {}).get("attn_out_norm")
    if not ab:
        return _finding("attn_out_norm", claim, measure, missing="no attn_out_norm ablation in this study")
    control, treated = list(ABLATIONS["attn_out_norm"])
    n = len(ab["seeds"])
    k_without, k_with = ab["diverged"][treated], ab["diverged"][control]
    paired = ab["over_seeds"]["paired"]
    est = {k: paired[0][k] for k in ("mean", "lo", "hi", "se", "n", "dof", "confidence")} if paired else None
    detail = f"diverged: {k_without}/{n} seeds without the norm, {k_with}/{n} with it"
    if k_without == n and k_with == 0:
        v = "reproduced"
    elif k_with == n and k_without == 0:
        v = "opposite"
    else:
        v = verdict(as_interval(est), 1) if est else "not resolved"
    return _finding("attn_out_norm", claim, measure, estimate=est, sign=1, verdict_=v, detail=detail)


def format_findings(data: Mapping) -> str:
    """The finding-by-finding markdown table."""
    conf = int(round(100 * data.get("confidence", 0.95)))
    lines = [f"| # | The study's finding | Measured here (mean [{conf}% t-interval] over seeds) | Verdict |",
             "|---|---|---|---|"]
    for i, f in enumerate(data["findings"], 1):
        est = f"{f['measure']}: **{fmt_interval(f['estimate'])}**" if f.get("estimate") else f["measure"]
        detail = f" ({f['detail']})" if f.get("detail") else ""
        lines.append(f"| {i} | {f['claim']} | {est}{detail} | **{f['verdict']}** |")
    return "\n".join(lines)
