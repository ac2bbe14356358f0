"""Regenerate the README's quickstart tables: the embedded default (RedLLM), its DecLLM twin and
the instruct stage, through the real CLI, from fresh run folders.

    python benchmarks/quickstart_tables.py                       # this CPU's native kernels
    python benchmarks/quickstart_tables.py --capabilities native,avx2,default

Each ``--capabilities`` entry re-runs everything with ``ATEN_CPU_CAPABILITY`` forced, i.e. as a CPU
with only those kernels would: the runs are deterministic for one kernel family, but AVX-512, AVX2
and the portable kernels round differently and 300 steps of training amplify that into visibly
different curves. The spread printed at the end is the honest "what varies across machines".

Prints markdown tables and writes ``benchmarks/results/quickstart_tables.json`` with the machine,
date, torch version, per-run wall time and the validation curves.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fit(args: list[str], root: Path, capability: str) -> tuple[float, Path]:
    env = dict(os.environ)
    env.pop("ATEN_CPU_CAPABILITY", None)
    if capability != "native":
        env["ATEN_CPU_CAPABILITY"] = capability
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "lightning_redllm", "fit", *args, "--trainer.default_root_dir", str(root),
                        "--trainer.enable_progress_bar", "false"], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"fit {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return wall, root


def evaluate(ckpt: Path, out: Path, capability: str) -> dict:
    """Held-out loss per source and length (the README's extrapolation table) of the RedLLM run."""
    env = dict(os.environ)
    env.pop("ATEN_CPU_CAPABILITY", None)
    if capability != "native":
        env["ATEN_CPU_CAPABILITY"] = capability
    r = subprocess.run([sys.executable, "-m", "lightning_redllm", "evaluate", "--ckpt", str(ckpt), "--lengths",
                        "128,256,512,1024", "--max_sequences", "16", "--out", str(out)], env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"evaluate failed:\n{r.stderr[-3000:]}")
    return json.loads(out.read_text())["lengths"]


def curve(root: Path, *keys: str) -> dict[str, dict[int, float]]:
    rows = list(csv.DictReader(open(next((root / "logs").rglob("metrics.csv")))))
    out: dict[str, dict[int, float]] = {k: {} for k in keys}
    for row in rows:
        for k in keys:
            if row.get(k):
                out[k][int(row["step"]) + 1] = float(row[k])  # logged at the end of step N-1's batch
    return out


def run_all(capability: str, work: Path) -> dict:
    red_wall, red = fit(["--config", "quickstart"], work / "redllm", capability)
    dec_wall, dec = fit(["--config", "quickstart", "--model", "DecLLMModule"], work / "decllm", capability)
    ins_wall, ins = fit(["--config", "quickstart", "--config", "quickstart-instruct",
                         "--model.init_args.init_from", str(red / "checkpoints" / "last.ckpt")],
                        work / "instruct", capability)
    ev = evaluate(red / "checkpoints" / "last.ckpt", work / "eval.json", capability)
    return {
        "capability": capability if capability != "native" else f"native ({torch.backends.cpu.get_cpu_capability()})",
        "evaluate_redllm": ev,
        "redllm": {"wall_s": red_wall, **curve(red, "val/loss")},
        "decllm": {"wall_s": dec_wall, **curve(dec, "val/loss")},
        "instruct": {"wall_s": ins_wall, **curve(ins, "val/loss", "val/acc")},
    }


def _row(name: str, points: dict[int, float], fmt: str = "{:.2f}") -> str:
    return f"| {name} | " + " | ".join(fmt.format(points[s]) for s in sorted(points)) + " |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--capabilities", default="native", help="comma-separated: native, avx512, avx2, default")
    p.add_argument("--out", default=str(RESULTS / "quickstart_tables.json"))
    a = p.parse_args()
    caps = [c.strip() for c in a.capabilities.split(",") if c.strip()]
    result = {"date": datetime.date.today().isoformat(), "machine": f"{cpu_model()}, {os.cpu_count()} cores",
              "torch": torch.__version__, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for cap in caps:
            result["runs"].append(run_all(cap, Path(tmp) / cap))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(f"{result['machine']}, torch {result['torch']}, {result['date']}\n")
    for run in result["runs"]:
        red, dec, ins = run["redllm"], run["decllm"], run["instruct"]
        steps = sorted(red["val/loss"])
        print(f"kernels: {run['capability']}")
        print("| step | " + " | ".join(map(str, steps)) + " |")
        print("|---" * (len(steps) + 1) + "|")
        print(_row(f"RedLLM (quickstart, {red['wall_s']:.0f} s)", red["val/loss"]))
        print(_row(f"DecLLM (`--model DecLLMModule`, {dec['wall_s']:.0f} s)", dec["val/loss"]))
        print(f"instruct ({ins['wall_s']:.0f} s): val/loss " + " -> ".join(f"{v:.2f}" for _, v in sorted(
            ins["val/loss"].items())) + "; val/acc " + " -> ".join(f"{v:.3f}" for _, v in sorted(
                ins["val/acc"].items())) + "\n")
    ev = result["runs"][0]["evaluate_redllm"]
    sources = sorted({src for rows in ev.values() for src in rows if src != "all"}) + ["all"]
    print(f"evaluate (RedLLM, kernels {result['runs'][0]['capability']}), loss per source and length:")
    print("| length | " + " | ".join(sources) + " |")
    print("|---" * (len(sources) + 1) + "|")
    for length, rows in ev.items():
        print(f"| {length} | " + " | ".join(f"{rows[src]['loss']:.2f}" if src in rows else "-" for src in sources)
              + " |")
    print()
    if len(result["runs"]) > 1:
        for fam in ("redllm", "decllm", "instruct"):
            finals = [run[fam]["val/loss"][max(run[fam]["val/loss"])] for run in result["runs"]]
            print(f"{fam}: final val/loss across kernel families {min(finals):.3f} .. {max(finals):.3f} "
                  f"(spread {max(finals) - min(finals):.3f})")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
