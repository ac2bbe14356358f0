"""Values over seeds: each group's mean with its t-interval, and paired differences between two groups.

An evaluation's per-model entries carry ``name`` (family, tuning variant or ablation arm), ``size``
and ``seed``. :func:`over_seeds` groups them by (name, size) and pairs two names at each size over the
seeds both have: ``a - b`` per seed (same seed = same initialization seed, data order and scored
tokens), so the seed-to-seed variation the two share cancels. The numbers come from
``eval.stats`` (t-intervals, the verdict rule); this module only groups and pairs, and its output is
plain JSON that the report renders and the findings read.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional

from ..eval.stats import Interval, mean_interval, paired_difference, verdict


def value_at(entry: Mapping, path: str) -> Optional[float]:
    """``entry["a"]["b"]`` for ``path`` ``"a.b"``; None when missing or not a finite number."""
    node: Any = entry
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, (int, float)) or not math.isfinite(node):
        return None
    return float(node)


def _by_seed(entries: Mapping[str, Mapping], metric: str) -> dict[tuple[str, str], dict]:
    """(name, size) -> {seed: value} (seed None when the study has no seeds)."""
    out: dict[tuple[str, str], dict] = {}
    for e in entries.values():
        v = value_at(e, metric)
        if v is not None:
            out.setdefault((e["name"], str(e["size"])), {})[e.get("seed")] = v
    return out


def _sorted_seeds(seeds: Iterable) -> list:
    return sorted(seeds, key=lambda s: (s is None, s if s is not None else 0))


def interval_dict(iv: Interval) -> dict:
    return {k: v for k, v in iv.to_dict().items()}


def over_seeds(entries: Mapping[str, Mapping], metrics: Mapping[str, str], pairs: Iterable[Mapping],
               confidence: float = 0.95) -> dict:
    """``metrics``: {dotted metric path: description}; ``pairs``: [{metric, a, b, expected_sign (+1/-1/None),
    claim}] -- ``a - b`` is the difference, ``expected_sign`` the study's direction of it."""
    out: dict = {"confidence": confidence, "metrics": {}, "paired": []}
    for metric, description in metrics.items():
        groups = []
        for (name, size), vals in _by_seed(entries, metric).items():
            seeds = _sorted_seeds(vals)
            xs = [vals[s] for s in seeds]
            groups.append({"name": name, "size": size, "seeds": seeds, "values": xs,
                           **interval_dict(mean_interval(xs, confidence))})
        out["metrics"][metric] = {"description": description, "groups": groups}
    for pair in pairs:
        metric, a, b = pair["metric"], pair["a"], pair["b"]
        by = _by_seed(entries, metric)
        sizes = [s for (n, s) in by if n == a and (b, s) in by]
        for size in sizes:
            va, vb = by[(a, size)], by[(b, size)]
            seeds = _sorted_seeds(set(va) & set(vb))
            if not seeds:
                continue
            xa, xb = [va[s] for s in seeds], [vb[s] for s in seeds]
            iv = paired_difference(xa, xb, confidence)
            sign = pair.get("expected_sign")
            out["paired"].append({"metric": metric, "a": a, "b": b, "size": size, "seeds": seeds, "a_values": xa,
                                  "b_values": xb, "differences": [x - y for x, y in zip(xa, xb)],
                                  **interval_dict(iv), "expected_sign": sign, "claim": pair.get("claim", ""),
                                  "verdict": verdict(iv, sign) if sign else None})
    return out


def pool_sizes(paired: Iterable[Mapping], metric: str, a: str, b: str, sizes: Optional[Iterable[str]] = None,
               confidence: float = 0.95) -> Optional[dict]:
    """One paired difference over seeds from the per-size entries of :func:`over_seeds` (``paired``): each
    seed's difference averaged over the sizes (those given, default all), for the seeds present at every
    one of them. None when there is nothing to pool."""
    rows = [p for p in paired if p["metric"] == metric and p["a"] == a and p["b"] == b
            and (sizes is None or p["size"] in set(sizes))]
    if not rows:
        return None
    common = set(rows[0]["seeds"])
    for r in rows[1:]:
        common &= set(r["seeds"])
    seeds = _sorted_seeds(common)
    if not seeds:
        return None
    per_seed = [sum(r["differences"][r["seeds"].index(s)] for r in rows) / len(rows) for s in seeds]
    iv = mean_interval(per_seed, confidence)
    return {"metric": metric, "a": a, "b": b, "sizes": [r["size"] for r in rows], "seeds": seeds,
            "differences": per_seed, **interval_dict(iv)}


def as_interval(d: Mapping) -> Interval:
    """An :class:`Interval` back from its dict (as :func:`over_seeds` and :func:`pool_sizes` write it)."""
    return Interval(d["mean"], d["lo"], d["hi"], d["se"], d["n"], d["dof"], d["confidence"])


def fmt_interval(d: Optional[Mapping], nd: int = 3) -> str:
    """``mean [lo, hi]``, or ``mean (n=1, no interval)``; ``-`` for None."""
    if not d:
        return "-"
    if d.get("lo") is None:
        return f"{d['mean']:.{nd}f} (n={d['n']}, no interval)"
    return f"{d['mean']:.{nd}f} [{d['lo']:.{nd}f}, {d['hi']:.{nd}f}]"
