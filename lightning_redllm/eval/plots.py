"""PNG plots of the study's comparisons (matplotlib, imported lazily: ``pip install 'lightning_redllm[eval]'``).

Every function takes the JSON-ready dict its evaluation wrote and an output folder, writes PNGs
there and returns their paths. Colours are fixed per family so plots read the same everywhere.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

INSTALL_HINT = "pip install 'lightning_redllm[eval]'"
COLORS = {"redllm": "#1f77b4", "decllm": "#d62728", "decllm+biattn": "#2ca02c"}


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError(f"plots need matplotlib: {INSTALL_HINT}") from None
    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    return plt


def write_results(out_dir: str | Path, name: str, result: dict, table: str,
                  plot: Callable[[dict, Path], list[Path]]) -> list[Path]:
    """What each study command ends with: ``out_dir/<name>.json``, the table printed, then the PNGs
    (or, without matplotlib, one line saying why there are none). Returns the files written."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{name}.json"]
    written[0].write_text(json.dumps(result, indent=2))
    print(table)
    try:
        written += plot(result, out)
    except ImportError as err:
        print(f"wrote {written[0]} (no plots: {err})")
        return written
    print("wrote " + ", ".join(map(str, written)))
    return written


def family_key(family: str, bidirectional_prefix: bool = False) -> str:
    return "decllm+biattn" if family == "decllm" and bidirectional_prefix else family


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def plot_extrapolation(result: dict, out_dir: str | Path, prefix: str = "extrapolation") -> list[Path]:
    """One PNG per prefix length: perplexity vs context length, one line per model."""
    plt = _pyplot()
    from .prefixes import prefix_label

    out = []
    train_len = result.get("train_length")
    for spec in result["prefix_lengths"]:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        styles = ["-", "--", ":", "-."]
        seen: dict[str, int] = {}
        for label, m in result["models"].items():
            pts = sorted((pt["length"], pt["ppl"]) for pt in m["points"] if pt["prefix"] == spec)
            if not pts:
                continue
            key = family_key(m["family"], m.get("bidirectional_prefix", False))
            style = styles[seen.get(key, 0) % len(styles)]
            seen[key] = seen.get(key, 0) + 1
            ax.plot([x for x, _ in pts], [y for _, y in pts], style, marker="o", color=COLORS.get(key), label=label)
        if train_len:
            ax.axvline(train_len, color="grey", lw=0.8, ls="--")
            ax.text(train_len, ax.get_ylim()[1], " trained", va="top", fontsize=8, color="grey")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("perplexity of the tokens after the prefix")
        ax.set_title(f"length extrapolation, prefix {spec}")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
        out.append(_save(fig, Path(out_dir) / f"{prefix}_{prefix_label(spec)}.png"))
    return out


def plot_efficiency(result: dict, out_dir: str | Path) -> list[Path]:
    """Decode throughput (tokens/s) vs batch size per preset and family, and per-token latency."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    for row in result["models"]:
        pts = sorted(((b["batch_size"], b["tokens_per_s"], b["decode_ms_per_token"]) for b in row["batches"]),
                     key=lambda p: p[0])
        color = COLORS.get(row["family"])
        ls = "-" if row["family"] == "redllm" else "--"
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], ls, marker="o", color=color, label=row["name"])
        timed = [p for p in pts if p[2] is not None]  # None: a decode timing marked unreliable (not a value)
        if timed:
            ax2.plot([p[0] for p in timed], [p[2] for p in timed], ls, marker="o", color=color, label=row["name"])
    for ax, ylabel in ((ax1, "generated tokens / s"), (ax2, "decode latency (ms / step)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
    ax1.legend(fontsize=7)
    w = result.get("workload", {})
    fig.suptitle(f"inference, random weights, prompt {w.get('prompt_len')} + {w.get('new_tokens')} new tokens "
                 f"({result.get('device', 'cpu')}, {result.get('dtype', '')})", fontsize=10)
    return [_save(fig, Path(out_dir) / "efficiency_throughput.png")]


def plot_quality_vs_flops(points: Sequence[dict], out_dir: str | Path, *, ylabel: str, name: str,
                          title: str = "quality vs inference FLOPs") -> list[Path]:
    """The study's "quality vs inference FLOPs": ``points`` = ``{label, family, inference_flops, value}``;
    one line per family (sorted by FLOPs), each point annotated with its label."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    groups: dict[str, list[dict]] = {}
    for pt in points:
        groups.setdefault(pt["family"], []).append(pt)
    for fam, pts in sorted(groups.items()):
        pts = sorted(pts, key=lambda p: p["inference_flops"])
        ax.plot([p["inference_flops"] for p in pts], [p["value"] for p in pts], marker="o", color=COLORS.get(fam),
                label=fam)
        for p in pts:
            ax.annotate(p["label"], (p["inference_flops"], p["value"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("inference FLOPs per example (analytic)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return [_save(fig, Path(out_dir) / f"{name}.png")]


def plot_scaling(result: dict, out_dir: str | Path) -> list[Path]:
    """Log-log loss vs training FLOPs and vs parameters, measured points and the fitted power laws."""
    plt = _pyplot()
    import numpy as np

    axes_def = [("flops", "training FLOPs C"), ("parameters", "parameters N")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, (x_key, xlabel) in zip(axes, axes_def):
        for fam, fam_res in sorted(result["families"].items()):
            pts = [p for p in result["points"] if family_key(p["family"], p.get("bidirectional_prefix", False)) == fam]
            if not pts:
                continue
            xs = np.array([p[x_key] for p in pts], dtype=float)
            ys = np.array([p["loss"] for p in pts], dtype=float)
            color = COLORS.get(fam)
            ax.scatter(xs, ys, color=color, zorder=3)
            fit = fam_res.get(x_key)
            label = fam
            if fit and fit.get("b") is not None:
                grid = np.geomspace(xs.min() / 1.5, xs.max() * 1.5, 50)
                ax.plot(grid, fit["a"] * grid ** (-fit["b"]), color=color)
                lo, hi = fit["b_ci"]
                label = f"{fam}: b = {fit['b']:.3f} [{lo:.3f}, {hi:.3f}]"
            ax.plot([], [], color=color, marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(result.get("loss_name", "loss"))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, title=f"loss = a * x^-b ({int(100 * result.get('confidence', 0.95))}% CI)",
                  title_fontsize=7)
    return [_save(fig, Path(out_dir) / "scaling.png")]


def plot_curves(curves: dict[str, dict[int, float]], out_dir: str | Path, *, name: str, ylabel: str,
                title: str) -> list[Path]:
    """Validation curves (label -> {step: value}), one line each."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, pts in sorted(curves.items()):
        if not pts:
            continue
        steps = sorted(pts)
        fam = "redllm" if label.startswith("redllm") else ("decllm+biattn" if "biattn" in label else "decllm")
        ax.plot(steps, [pts[s] for s in steps], marker=".", color=COLORS.get(fam), label=label, alpha=0.8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return [_save(fig, Path(out_dir) / f"{name}.png")]
