"""``python -m lightning_redllm report RUNS_DIR``: one markdown page from whatever a folder holds.

Gathers, recursively: training runs (``logs/version_*/metrics.csv`` + ``checkpoints/last.ckpt``),
the JSON written by ``evaluate --out``, ``extrapolate``, ``efficiency``, ``scaling``, lm-eval results
(``{"results": {task: {metric: value}}}``) and the study's own JSON, and every PNG. Each JSON is
recognized by its ``kind`` (or its shape, for ``evaluate`` and lm-eval); tables are rendered, PNGs
embedded with paths relative to the page. Nothing is recomputed: the page shows what was measured.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
from pathlib import Path
from typing import Optional, Sequence

SKIP_DIRS = {".study", "checkpoints", "tb", "__pycache__"}
STUDY_EXPONENTS = {"decllm": 0.20, "redllm": 0.24}  # arXiv 2510.26622 Table 2b, RedPajama, vs training FLOPs


def run_curves(run_dir: str | Path, keys: Sequence[str] = ("val/loss", "val/acc", "train/loss")) -> dict:
    """{key: {step: value}} from the newest ``logs/version_*/metrics.csv`` of a run."""
    files = sorted(Path(run_dir).glob("logs/version_*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    out: dict = {k: {} for k in keys}
    for path in files[-1:]:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                for k in keys:
                    if row.get(k):
                        out[k][int(row["step"]) + 1] = float(row[k])
    return out


def _walk(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        yield Path(dirpath), sorted(filenames)


def _classify(data) -> Optional[str]:
    if not isinstance(data, dict):
        return None
    kind = data.get("kind")
    if isinstance(kind, str) and kind.startswith("lightning_redllm."):
        return kind.split(".", 1)[1].split("/", 1)[0]
    if "lengths" in data and "family" in data and "ckpt" in data:
        return "evaluate"
    if isinstance(data.get("results"), dict) and all(isinstance(v, dict) for v in data["results"].values()):
        return "lm_eval_raw"
    return None


def _fmt(x, nd=3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        return f"{x:.{nd}f}" if abs(x) < 1e5 else f"{x:.3g}"
    return str(x)


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in r) + " |" for r in rows]
    return out + [""]


def _img(page_dir: Path, png: Path, used: set) -> str:
    used.add(png.resolve())
    return f"![{png.stem}]({os.path.relpath(png, page_dir)})"


def _runs_section(root: Path, page_dir: Path) -> list[str]:
    rows = []
    for d, files in _walk(root):
        if d.name.startswith("version_") and "metrics.csv" in files:
            run = d.parent.parent
            curves = run_curves(run)
            ckpt = run / "checkpoints" / "last.ckpt"
            fam = params = steps = tokens = None
            if ckpt.exists():
                try:
                    from ..config import ModelConfig, num_parameters
                    from ..reliability import load_torch_file

                    st = load_torch_file(ckpt, mmap=True)
                    cfg = ModelConfig.from_dict(st["model_config"])
                    fam = cfg.family + (" + BiAttn" if cfg.bidirectional_prefix else "")
                    params = f"{num_parameters(cfg) / 1e6:.2f}M"
                    steps = int(st.get("global_step", 0))
                    tokens = int((st.get("module_counters") or {}).get("tokens_seen", 0))
                except Exception as err:  # a report shows what it can; name what it could not read
                    fam = f"(unreadable checkpoint: {type(err).__name__})"
            val = curves.get("val/loss") or {}
            last = val[max(val)] if val else None
            rows.append([os.path.relpath(run, page_dir), fam or "-", params or "-", _fmt(steps), _fmt(tokens),
                         _fmt(last)])
    if not rows:
        return []
    seen, uniq = set(), []
    for r in rows:
        if r[0] not in seen:
            seen.add(r[0])
            uniq.append(r)
    return ["## Training runs", ""] + _table(["run", "family", "parameters", "steps", "tokens seen",
                                              "last val/loss (own objective)"], uniq)


def _over_seeds(block: Optional[dict], label_of=lambda name, size: f"{name}-{size}") -> list[str]:
    """Tables of an evaluation's ``over_seeds`` (``paired.over_seeds``): mean [t-interval] per group, then the
    paired differences with the study's direction and the verdict. Nothing when every group has one seed."""
    from .paired import fmt_interval

    if not block:
        return []
    groups = [g for m in block["metrics"].values() for g in m["groups"]]
    if not groups or max(g["n"] for g in groups) < 2:
        return []
    conf = int(round(100 * block.get("confidence", 0.95)))
    lines = [f"Over seeds (mean [{conf}% t-interval]):", ""]
    for metric, m in block["metrics"].items():
        lines += _table(["group", "seeds", m["description"]],
                        [[label_of(g["name"], g["size"]), ", ".join(str(s) for s in g["seeds"]), fmt_interval(g)]
                         for g in m["groups"]])
    if block["paired"]:
        sign = {1: "> 0", -1: "< 0", None: "-"}
        lines += _table(["metric", "size", "paired difference", "seeds", f"difference [{conf}% t-interval]",
                         "the study", "verdict"],
                        [[p["metric"], p["size"], f"{p['a']} - {p['b']}", ", ".join(str(s) for s in p["seeds"]),
                          fmt_interval(p), sign[p["expected_sign"]], p["verdict"] or "-"] for p in block["paired"]])
    return lines


def _ablations_section(data: dict, images) -> list[str]:
    from .paired import fmt_interval

    lines = []
    ab = data.get("attn_out_norm")
    if ab:
        lines += ["## Ablation: RedLLM without the attention-output norm", "",
                  f"Size {ab['size']}, the ablation's settings `{ab['args']}`, seeds {ab['seeds']}. A run diverged "
                  "when its non-finite guard stopped it, it logged a non-finite loss, skipped a step, or ended above "
                  "its first logged training loss.", ""]
        lines += _table(["run", "diverged", "why", "final val/loss", "largest rise over running min (nats)"],
                        [[label, "yes" if r["diverged"] else "no", "; ".join(r["reasons"]) or "-",
                          _fmt(r["final_val_loss"]), _fmt(r["max_rise"])] for label, r in ab["runs"].items()])
        lines += _over_seeds(ab["over_seeds"]) + images("ablation_", None) + [""]
    if data.get("biattn"):
        lines += ["## Ablation: DecLLM + BiAttn vs DecLLM after tuning", ""]
        lines += _table(["metric", "size", "seeds", "BiAttn - causal [95% t-interval]", "verdict"],
                        [[p["metric"], p["size"], ", ".join(str(s) for s in p["seeds"]), fmt_interval(p),
                          p["verdict"] or "-"] for p in data["biattn"]["paired"]])
    return lines


def build_report(root: str | Path, page: Optional[str | Path] = None, title: Optional[str] = None) -> str:
    """The markdown page for everything under ``root`` (links relative to ``page``'s folder)."""
    from ..eval.efficiency import format_efficiency
    from ..eval.extrapolation import format_extrapolation, prefix_label
    from ..eval.scaling import format_scaling

    root = Path(root)
    page_dir = Path(page).parent if page else root
    found: dict[str, list[tuple[Path, dict]]] = {}
    pngs: list[Path] = []
    for d, files in _walk(root):
        for f in files:
            p = d / f
            if f.endswith(".png"):
                pngs.append(p)
            elif f.endswith(".json"):
                try:
                    data = json.loads(p.read_text())
                except (OSError, ValueError):
                    continue
                kind = _classify(data)
                if kind:
                    found.setdefault(kind, []).append((p, data))
    used: set = set()

    def images(prefix: str, folder: Path) -> list[str]:
        return [_img(page_dir, p, used) for p in pngs if p.parent == folder and p.name.startswith(prefix)]

    lines = [f"# {title or 'Report: ' + str(root)}", ""]
    from .findings import format_findings

    for path, st in found.get("study", []):
        lines += [st.get("description", "").strip(), "",
                  f"Config `{st.get('config')}`; {st.get('cpu')}, torch {st.get('torch')}, {st.get('threads')} thread(s) per process; "
                  f"stages took {st.get('wall_seconds', 0) / 60:.1f} min in all."
                  + (f" Seeds {st['seeds']}: every run once per seed, both families of a pair with the same seed "
                     "(same initialization seed, data order and scored tokens)." if st.get("seeds") else ""), ""]
        if st.get("budgets"):
            lines += ["Pretraining budget per size (tokens = tokens_per_parameter x mean non-embedding parameters "
                      "of the families, in steps rounded up to the checkpoint interval; lr by the study's rule):", ""]
            lines += _table(["size", "d_model", "non-embedding parameters", "tokens (target)", "max_steps", "lr"],
                            [[b["size"], b["d_model"], ", ".join(f"{f} {n / 1e6:.3f}M" for f, n in b["non_embedding"].items()),
                              _fmt(b["tokens"]), _fmt(b["max_steps"]), _fmt(b["lr"], 5)] for b in st["budgets"].values()])
    for p, data in found.get("study_findings", []):
        lines += ["## The study's findings, one by one", "",
                  "\"reproduced\": the interval excludes zero in the study's direction; \"opposite\": it excludes "
                  "zero the other way; \"not resolved\": it does not (or one seed: no interval).", "",
                  format_findings(data), ""]
    lines += _runs_section(root, page_dir)
    for p, data in found.get("curves", []):
        lines += ["## Validation curves", ""] + images("curves_", p.parent) + [""]

    for p, data in found.get("study_perplexity", []):
        lines += ["## Held-out perplexity (in-domain, bundled validation split)", "",
                  f"`matched`: the same tokens for both families: each {data['length']}-token sequence's second half "
                  f"given its first {data['prefix_len']} tokens (RedLLM: encoder; DecLLM: causal context). "
                  "`own`: each family's training objective (DecLLM predicts all tokens), per source.", ""]
        sources = sorted({s for m in data["models"].values() for s in m["matched_loss"] if s != "all"})
        rows = []
        for label, m in data["models"].items():
            own = m["own_objective"]
            rows.append([label, f"{m['parameters'] / 1e6:.2f}M", _fmt(m["matched_loss"]["all"]),
                         _fmt(math.exp(m["matched_loss"]["all"]), 1)]
                        + [_fmt(m["matched_loss"].get(s)) for s in sources] + [_fmt(own.get("all", {}).get("loss"))])
        lines += _table(["model", "params", "matched loss", "matched ppl", *[f"matched {s}" for s in sources],
                         "own-objective loss"], rows)
        lines += _over_seeds(data.get("over_seeds"))
    for p, data in found.get("evaluate", []):
        lines += [f"## evaluate: `{data.get('ckpt')}` ({data.get('family')})", ""]
        for length, rows in data["lengths"].items():
            lines += _table([f"length {length}: source", "sequences", "tokens", "loss", "ppl", "acc"],
                            [[s, r["sequences"], r["tokens"], r["loss"], r["ppl"], r["acc"]] for s, r in rows.items()])
    for p, data in found.get("extrapolation", []):
        lines += ["## Length extrapolation", "",
                  f"Trained at {data.get('train_length')} tokens; sources {', '.join(data['sources'])}, "
                  f"{data['tokens_per_source']} tokens each per length.", "", format_extrapolation(data), ""]
        for spec in data["prefix_lengths"]:
            lines += images(f"extrapolation_{prefix_label(spec)}.", p.parent)
        lines.append("")
        lines += _over_seeds(data.get("over_seeds"))
    for p, data in found.get("efficiency", []):
        lines += ["## Inference efficiency", "", format_efficiency(data), ""] + images("efficiency_", p.parent) + [""]
    for p, data in found.get("quality_flops", []):
        lines += ["## Quality vs inference FLOPs", "",
                  f"Analytic FLOPs per example: prompt {data['prompt_len']} tokens + {data['new_tokens']} generated.", ""]
        for key in ("pretrained", "instruct"):
            if data.get(key):
                lines += _table(["model", "family", "inference GFLOPs / example", data.get(f"{key}_metric", "value")],
                                [[q["label"], q["family"], _fmt(q["inference_flops"] / 1e9, 4), _fmt(q["value"], 2)]
                                 for q in sorted(data[key], key=lambda q: q["inference_flops"])])
        lines += images("quality_vs_flops", p.parent) + [""]
    for p, data in found.get("scaling", []):
        lines += ["## Scaling fits", "", f"loss = a * x^-b, fitted per family on {data.get('loss_name')}.", "",
                  format_scaling(data), "",
                  "The study (Table 2b, RedPajama, vs training FLOPs): b = "
                  + ", ".join(f"{v:.2f} ({k})" for k, v in STUDY_EXPONENTS.items()) + ".", ""]
        lines += _table(["run", "family", "parameters", "training FLOPs", "loss"],
                        [[pt.get("label", pt.get("run")), pt["family"], f"{pt['parameters'] / 1e6:.2f}M",
                          f"{pt['flops']:.3g}", _fmt(pt["loss"])] for pt in data["points"]])
        if data.get("difference"):
            from .paired import fmt_interval

            fams = data["families"]
            lines += _table(["x", "b RedLLM", "b DecLLM", "b(RedLLM) - b(DecLLM) [Welch 95% interval]"],
                            [[key, _fmt((fams["redllm"].get(key) or {}).get("b")),
                              _fmt((fams["decllm"].get(key) or {}).get("b")), fmt_interval(d)]
                             for key, d in data["difference"].items()])
        lines += images("scaling", p.parent) + [""]
    for p, data in found.get("study_instruct", []):
        tasks = sorted({t for m in data["models"].values() for t in m["tasks"]})
        lines += ["## Instruction tuning: seen and held-out tasks", "",
                  f"Held out entirely (never in the tuning data): {', '.join(data['held_out_tasks']) or 'none'}. "
                  "Target loss per token; seen tasks on the validation split, held-out tasks on all their examples.", ""]
        rows = []
        mc_cols = sorted({t for m in data["models"].values() for t, v in m["tasks"].items() if "mc_accuracy" in v})
        for label, m in data["models"].items():
            rows.append([label, _fmt(m.get("seen_loss")), _fmt(m.get("held_out_loss"))]
                        + [_fmt(m["tasks"].get(t, {}).get("loss")) for t in tasks]
                        + [f"{m['tasks'][t]['mc_accuracy']:.3f} (chance {m['tasks'][t]['mc_chance']:.2f})"
                           for t in mc_cols if t in m["tasks"]])
        lines += _table(["model", "seen-task loss", "held-out-task loss",
                         *[t + (" (held out)" if t in data["held_out_tasks"] else "") for t in tasks],
                         *[f"{t} accuracy" for t in mc_cols]], rows)
        lines += _over_seeds(data.get("over_seeds"))
    for p, data in found.get("study_zero_shot", []):
        lines += ["## Zero-shot before tuning: the pretrained models on the instruction tasks", "",
                  "Target loss per token of each task, scored the way each family would be tuned; nothing was tuned "
                  "on any task yet.", ""]
        lines += _table(["model", "mean task loss", "multiple-choice accuracy", *data["tasks"]],
                        [[label, _fmt(m["all_loss"]), _fmt(m.get("mc_accuracy")),
                          *[_fmt(m["tasks"].get(t, {}).get("loss")) for t in data["tasks"]]]
                         for label, m in data["models"].items()])
        lines += _over_seeds(data.get("over_seeds"))
    for p, data in found.get("study_ablations", []):
        lines += _ablations_section(data, lambda prefix, _: images(prefix, p.parent))
    for p, data in found.get("study_lm_eval", []):
        lines += ["## lm-eval tasks", ""]
        if data.get("skipped"):
            lines += [f"Skipped: {data['skipped']}.", ""]
            continue
        cols, rows = [], []
        for label, m in data["models"].items():
            for shots, res in m["shots"].items():
                row = {}
                for task, metrics in res.items():
                    for k, v in metrics.items():
                        if isinstance(v, (int, float)) and "stderr" not in k:
                            col = f"{task} {k.split(',')[0]}"
                            row[col] = v
                            if col not in cols:
                                cols.append(col)
                rows.append((label, shots, row))
        lines += [f"limit {data.get('limit')} examples per task.", ""]
        lines += _table(["model", "shots", *cols], [[lb, s, *[_fmt(r.get(c)) for c in cols]] for lb, s, r in rows])
    for p, data in found.get("lm_eval_raw", []):
        lines += [f"## lm-eval: `{os.path.relpath(p, page_dir)}`", ""]
        lines += _table(["task", "metric", "value"], [[t, k.split(",")[0], _fmt(v)] for t, ms in data["results"].items()
                                                     for k, v in ms.items() if isinstance(v, (int, float))
                                                     and "stderr" not in k])
    rest = [p for p in pngs if p.resolve() not in used]
    if rest:
        lines += ["## Other figures", ""] + [_img(page_dir, p, used) for p in rest] + [""]
    if len(lines) <= 2:
        lines += [f"Nothing to report: no runs, evaluation JSON or PNGs under `{root}`.", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(root: str | Path, out: Optional[str | Path] = None, title: Optional[str] = None) -> Path:
    out = Path(out) if out else Path(root) / "report.md"
    text = build_report(root, out, title)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, out)
    return out


def report_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m lightning_redllm report",
                                description="Gather the runs, evaluation JSON and PNGs under RUNS_DIR into one markdown page.")
    p.add_argument("runs_dir", help="folder to gather (searched recursively)")
    p.add_argument("--out", default=None, help="markdown file to write (default: RUNS_DIR/report.md)")
    p.add_argument("--title", default=None)
    a = p.parse_args(list(argv))
    if not Path(a.runs_dir).is_dir():
        raise ValueError(f"report: {a.runs_dir} is not a folder")
    path = write_report(a.runs_dir, a.out, a.title)
    print(f"wrote {path}")
    return 0
