"""gpu_day stage 1: the environment and every import the later stages need; fails fast, naming what is missing.

    python benchmarks/gpu_day_env.py --out env.json          # on the GPU (CUDA required)
    python benchmarks/gpu_day_env.py --cpu --out env.json    # the CPU dry run

Imports every module of ``lightning_redllm`` and ``data_pipelines`` (the lm-eval adapter only when lm-eval
is there: it is not carried), the third-party modules the stages call (DeepSpeed's ZeRO-3, Lightning's
DeepSpeed and ModelParallel strategies, HF Llama and T5Gemma, pytest with xdist, ...), and says where
each carried package was loaded from (``.whl/`` installs into the folder at the front of PYTHONPATH);
a distribution found twice on ``sys.path`` is reported (a carried wheel shadowing the image's copy).
On the GPU it also checks CUDA, bf16 and a matmul on the device.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import pkgutil
import platform
import subprocess
import sys
import time
import traceback
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: third-party modules the stages import (beyond what lightning_redllm's own modules pull in)
THIRD_PARTY = ["torch", "triton", "lightning", "lightning.pytorch.strategies", "torchmetrics", "transformers",
               "transformers.models.llama", "transformers.models.t5gemma", "safetensors", "tokenizers",
               "sentencepiece", "numpy", "yaml", "deepspeed", "deepspeed.runtime.zero.stage3",
               "deepspeed.utils.zero_to_fp32", "pydantic", "webdataset", "torchdata.stateful_dataloader",
               "jsonargparse", "omegaconf", "zstandard", "pytest", "xdist", "psutil"]
#: not carried to the GPU machine (the `eval` extra); modules that need them are reported, not failed
OPTIONAL = {"lm_eval", "litgpt", "datasets"}


def _walk(package: str) -> list[str]:
    mod = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(mod.__path__, prefix=package + "."):
        if not info.name.endswith(".__main__"):  # importing it would run the CLI
            names.append(info.name)
    return names


def _try_import(name: str) -> dict:
    t = time.perf_counter()
    try:
        mod = importlib.import_module(name)
    except BaseException as err:  # noqa: BLE001 -- SystemExit from a module is a failure too
        missing = getattr(err, "name", None) if isinstance(err, ModuleNotFoundError) else None
        return {"module": name, "ok": False, "error": f"{type(err).__name__}: {err}".strip()[:400],
                "missing": missing, "trace": traceback.format_exc(limit=-3)[-1200:]}
    return {"module": name, "ok": True, "seconds": round(time.perf_counter() - t, 2),
            "file": getattr(mod, "__file__", None)}


def _distributions() -> tuple[dict, dict]:
    from importlib.metadata import distributions

    where: dict[str, list[str]] = defaultdict(list)
    versions: dict[str, str] = {}
    for d in distributions():
        name = (d.metadata["Name"] or "?").lower().replace("_", "-")
        where[name].append(str(d._path.parent) if hasattr(d, "_path") else "?")  # type: ignore[attr-defined]
        versions.setdefault(name, d.version)
    dup = {k: v for k, v in where.items() if len(set(v)) > 1}
    return versions, dup


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", action="store_true", help="the CPU dry run: no CUDA required")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "mode": "cpu" if a.cpu else "gpu",
                 "python": sys.version.split()[0], "executable": sys.executable, "machine": platform.machine(),
                 "host": platform.node(), "cpus": os.cpu_count(), "pythonpath": os.environ.get("PYTHONPATH", ""),
                 "problems": []}
    problems = res["problems"]

    rows = [_try_import(m) for m in THIRD_PARTY]
    for pkg in ("lightning_redllm", "data_pipelines"):
        try:
            names = _walk(pkg)
        except BaseException as err:  # noqa: BLE001
            rows.append({"module": pkg, "ok": False, "error": f"{type(err).__name__}: {err}"[:400],
                         "missing": getattr(err, "name", None)})
            continue
        rows += [_try_import(n) for n in names if n != pkg] + [_try_import(pkg)]
    optional_missing = []
    for r in rows:
        if r["ok"]:
            continue
        needs = r.get("missing") or ""
        if not needs and "lm-eval" in r["error"]:  # the adapter's own ImportError names the `eval` extra
            needs = "lm_eval"
        if needs.split(".")[0] in OPTIONAL:
            r["missing"] = needs
            r["optional"] = True
            optional_missing.append(f"{r['module']} (needs {r['missing']}: not carried)")
        else:
            problems.append(f"import {r['module']}: {r['error']}")
    try:  # the CLI finds its recipes without an install (the checkout's recipes/)
        from lightning_redllm.assets.recipes import RECIPES

        res["recipes"] = str(RECIPES)
        for name in ("quickstart.yaml", "strategy/zero3.yaml", "strategy/fsdp.yaml"):
            if not (RECIPES / name).is_file():
                problems.append(f"recipe {name} not found under {RECIPES}")
    except Exception as err:  # noqa: BLE001 -- already reported by the import rows when it is an import
        problems.append(f"the CLI's recipes: {type(err).__name__}: {err}"[:400])
    res["imports"] = rows
    res["optional_missing"] = optional_missing
    versions, dup = _distributions()
    res["versions"] = {k: versions.get(k) for k in (
        "torch", "triton", "lightning", "pytorch-lightning", "torchmetrics", "transformers", "deepspeed", "numpy",
        "pydantic", "jsonargparse", "omegaconf", "webdataset", "torchdata", "safetensors", "tokenizers",
        "pytest", "pytest-xdist")}
    res["duplicate_distributions"] = dup
    site = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != REPO]
    res["carried_site"] = site
    res["loaded_from_carried_site"] = sorted(
        r["module"] for r in rows if r.get("ok") and r.get("file") and any(r["file"].startswith(s) for s in site))

    try:
        import torch

        res["torch_cuda"] = torch.version.cuda
        res["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            res["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2 ** 30, 1),
                          "capability": f"{props.major}.{props.minor}", "sms": props.multi_processor_count,
                          "bf16": torch.cuda.is_bf16_supported(), "cudnn": torch.backends.cudnn.version()}
            x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
            y = (x @ x).float()
            torch.cuda.synchronize()
            if not bool(torch.isfinite(y).all()):
                problems.append("a bf16 matmul on the GPU gave non-finite values")
            try:
                smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.sm,"
                                      "clocks.max.sm,power.limit", "--format=csv,noheader"],
                                     capture_output=True, text=True, timeout=30)
                res["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
            except (OSError, subprocess.TimeoutExpired) as err:
                res["nvidia_smi"] = f"unavailable: {err}"
        elif not a.cpu:
            problems.append(f"no CUDA device visible to torch {torch.__version__} (torch.version.cuda="
                            f"{torch.version.cuda}); the CPU dry run is --cpu")
        else:
            res["threads"] = torch.get_num_threads()
    except Exception as err:  # noqa: BLE001
        problems.append(f"torch: {type(err).__name__}: {err}")

    table = ["| what | value |", "|---|---|"]
    table.append(f"| python | {res['python']} ({res['executable']}) |")
    for k, v in res["versions"].items():
        table.append(f"| {k} | {v} |")
    if "gpu" in res:
        g = res["gpu"]
        table.append(f"| GPU | {g['name']}, {g['memory_gib']} GiB, sm {g['capability']}, {g['sms']} SMs |")
        table.append(f"| nvidia-smi | {res.get('nvidia_smi', '')} |")
    table.append(f"| imports | {sum(r['ok'] for r in rows)} of {len(rows)} modules "
                 f"({len(res['loaded_from_carried_site'])} from the carried wheels) |")
    if optional_missing:
        table.append(f"| optional, not carried | {'; '.join(optional_missing)} |")
    if dup:
        table.append(f"| found twice on sys.path | {', '.join(sorted(dup))} |")
    res["table"] = "\n".join(table)
    res["ok"] = not problems
    a.out.write_text(json.dumps(res, indent=1, default=str))
    print(res["table"])
    if problems:
        print("\nMISSING / BROKEN (the later stages need these):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
