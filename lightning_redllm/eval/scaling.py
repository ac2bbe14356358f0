"""Scaling fits: loss = a * C^-b (C = training FLOPs) and loss = a * N^-b (N = parameters), per family.

The study (arXiv 2510.26622, Table 2b) reports these exponents on RedPajama: b = 0.20 for DecLLM and
0.24 for RedLLM vs training FLOPs. A power law is a line in log-log space,
``log L = log a - b log x``, so it is fitted by ordinary least squares on the logs; the confidence
interval of ``b`` (and of ``log a``) is the usual one of a regression slope,
``b +- t_{(1+conf)/2, n-2} * se(b)``, with the Student-t quantile computed here (numpy only, no
scipy). With n = 3 runs per family there is 1 degree of freedom and the interval is honest but wide.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..config import ModelConfig, num_parameters, training_flops_per_sequence

KIND = "lightning_redllm.scaling/1"


# ------------------------------------------------------------------------------------------------
# Student-t quantile (regularized incomplete beta by Lentz's continued fraction, then bisection)


def _betacf(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b)."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, dof: float) -> float:
    if dof <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {dof}")
    tail = 0.5 * betainc(dof / 2.0, 0.5, dof / (dof + t * t))
    return 1.0 - tail if t >= 0 else tail


def student_t_ppf(q: float, dof: float) -> float:
    """Quantile of Student's t with ``dof`` degrees of freedom (bisection on the CDF to ~1e-12)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {q}")
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -student_t_ppf(1.0 - q, dof)
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, dof) < q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if student_t_cdf(mid, dof) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# ------------------------------------------------------------------------------------------------
# power-law fit


@dataclass
class PowerLawFit:
    """loss = a * x^-b fitted on n points; ``b_ci`` / ``a_ci`` at ``confidence`` (None when n < 3)."""

    a: float
    b: float
    b_ci: Optional[tuple[float, float]]
    a_ci: Optional[tuple[float, float]]
    b_se: Optional[float]
    r2: float
    n: int
    confidence: float

    def predict(self, x) -> np.ndarray:
        return self.a * np.asarray(x, dtype=float) ** (-self.b)

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("b_ci", "a_ci"):
            d[k] = list(d[k]) if d[k] is not None else None
        return d


def fit_power_law(x: Sequence[float], loss: Sequence[float], confidence: float = 0.95) -> PowerLawFit:
    """OLS of ``log loss`` on ``log x``; the slope is ``-b``. Needs >= 2 points (>= 3 for an interval)."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(loss, dtype=float)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(f"x and loss must be 1-D of the same length, got {xs.shape} and {ys.shape}")
    if len(xs) < 2:
        raise ValueError(f"a power-law fit needs at least 2 points, got {len(xs)}")
    if np.any(xs <= 0) or np.any(ys <= 0) or not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
        raise ValueError("power-law fit: x and loss must be finite and > 0")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    lx, ly = np.log(xs), np.log(ys)
    mx = lx.mean()
    sxx = float(((lx - mx) ** 2).sum())
    if sxx == 0:
        raise ValueError("power-law fit: all x are equal")
    slope = float(((lx - mx) * (ly - ly.mean())).sum() / sxx)
    intercept = float(ly.mean() - slope * mx)
    resid = ly - (intercept + slope * lx)
    sst = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - float((resid ** 2).sum()) / sst if sst > 0 else 1.0
    n = len(xs)
    b_ci = a_ci = b_se = None
    if n >= 3:
        dof = n - 2
        s2 = float((resid ** 2).sum()) / dof
        b_se = math.sqrt(s2 / sxx)
        a_se = math.sqrt(s2 * (1.0 / n + mx * mx / sxx))  # of log a
        t = student_t_ppf(0.5 + confidence / 2.0, dof)
        b_ci = (-slope - t * b_se, -slope + t * b_se)
        a_ci = (math.exp(intercept - t * a_se), math.exp(intercept + t * a_se))
    return PowerLawFit(a=math.exp(intercept), b=-slope, b_ci=b_ci, a_ci=a_ci, b_se=b_se, r2=r2, n=n,
                       confidence=confidence)


# ------------------------------------------------------------------------------------------------
# runs -> points -> fits


def run_point(ckpt: str | Path) -> dict:
    """Parameters, training FLOPs and final validation loss of a finished pretraining run.

    C = sequences seen x analytic training FLOPs per sequence (``config.training_flops_per_sequence``
    at the run's ``seq_len`` and, for RedLLM, its ``prefix_len``); sequences seen = the module's
    ``tokens_seen`` counter (all ranks) / ``seq_len``. The loss is the last ``val/loss`` of the run's
    ``metrics.csv`` when there is one (None otherwise).
    """
    from ..reliability import load_torch_file

    ckpt = Path(ckpt)
    state = load_torch_file(ckpt, mmap=True)
    cfg = ModelConfig.from_dict(state["model_config"])
    dm = state.get("datamodule_hyper_parameters") or {}
    seq_len = dm.get("seq_len")
    if not seq_len:
        raise ValueError(f"{ckpt} is not a pretraining run (no data seq_len in its checkpoint)")
    hp = state.get("hyper_parameters") or {}
    tokens = int((state.get("module_counters") or {}).get("tokens_seen", 0))
    prefix_len = hp.get("prefix_len") if cfg.family == "redllm" else None
    flops = tokens / seq_len * training_flops_per_sequence(cfg, int(seq_len), prefix_len)
    run_dir = ckpt.parent.parent
    return {"run": str(run_dir), "family": cfg.family, "bidirectional_prefix": bool(cfg.bidirectional_prefix),
            "parameters": num_parameters(cfg), "flops": float(flops), "tokens": tokens,
            "steps": int(state.get("global_step", 0)), "loss": last_metric(run_dir, "val/loss")}


def last_metric(run_dir: str | Path, key: str) -> Optional[float]:
    """The last logged value of ``key`` in the newest ``logs/version_*/metrics.csv`` of a run (None if absent)."""
    import csv

    files = sorted(Path(run_dir).glob("logs/version_*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    value = None
    for path in files[-1:]:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get(key):
                    value = float(row[key])
    return value


def scaling_fits(points: Sequence[dict], confidence: float = 0.95, loss_name: str = "held-out loss") -> dict:
    """Fits per family (``decllm+biattn`` kept apart) vs ``flops`` and vs ``parameters``.

    ``points``: dicts with ``family``, ``parameters``, ``flops``, ``loss`` (+ any labels). A family
    with fewer than 2 points gets ``None`` fits and a ``note``.
    """
    from .plots import family_key

    fams: dict[str, list[dict]] = {}
    for p in points:
        if p.get("loss") is None:
            continue
        fams.setdefault(family_key(p["family"], p.get("bidirectional_prefix", False)), []).append(p)
    out: dict = {"kind": KIND, "confidence": confidence, "loss_name": loss_name, "points": list(points),
                 "families": {}}
    for fam, pts in sorted(fams.items()):
        entry: dict = {"n": len(pts)}
        for key in ("flops", "parameters"):
            xs = [p[key] for p in pts]
            if len(set(xs)) < 2:
                entry[key] = None
                entry["note"] = f"{len(set(xs))} distinct {key} value(s): no fit"
                continue
            entry[key] = fit_power_law(xs, [p["loss"] for p in pts], confidence).to_dict()
        out["families"][fam] = entry
    return out


def format_scaling(result: dict) -> str:
    conf = int(round(100 * result["confidence"]))
    lines = [f"| family | runs | b vs FLOPs [{conf}% CI] | a | R^2 | b vs parameters [{conf}% CI] | R^2 |",
             "|---|---|---|---|---|---|---|"]
    for fam, e in result["families"].items():
        def cell(fit):
            if not fit:
                return "-"
            ci = f" [{fit['b_ci'][0]:.3f}, {fit['b_ci'][1]:.3f}]" if fit.get("b_ci") else " (no CI: 2 points)"
            return f"{fit['b']:.3f}{ci}"
        fl, pa = e.get("flops"), e.get("parameters")
        lines.append(f"| {fam} | {e['n']} | {cell(fl)} | {fl['a']:.3g} | {fl['r2']:.3f} | {cell(pa)} | "
                     f"{pa['r2']:.3f} |" if fl and pa else f"| {fam} | {e['n']} | {cell(fl)} | - | - | {cell(pa)} | - |")
    return "\n".join(lines)


def scaling_main(argv: Sequence[str]) -> int:
    """``python -m lightning_redllm scaling RUN_DIR ... --out DIR``"""
    import argparse

    p = argparse.ArgumentParser(prog="python -m lightning_redllm scaling",
                                description="Fit loss = a * C^-b (training FLOPs) and loss = a * N^-b (parameters) "
                                            "per family from finished pretraining runs (their last val/loss).")
    p.add_argument("runs", nargs="+", help="run folders (holding checkpoints/last.ckpt) or .ckpt files")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--out", required=True, help="output folder: scaling.json and scaling.png")
    a = p.parse_args(list(argv))
    points = []
    for r in a.runs:
        path = Path(r)
        ckpt = path if path.is_file() else path / "checkpoints" / "last.ckpt"
        if not ckpt.exists():
            raise ValueError(f"no checkpoint in {r} (expected {ckpt})")
        points.append(run_point(ckpt))
    res = scaling_fits(points, a.confidence, loss_name="val/loss (training objective)")
    from .plots import plot_scaling, write_results

    write_results(a.out, "scaling", res, format_scaling(res), plot_scaling)
    return 0
