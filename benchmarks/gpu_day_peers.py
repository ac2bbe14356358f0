"""gpu_day stages 3 and 4: training throughput + MFU, and decoding vs the HBM bound, ours vs HF peers.

    python benchmarks/gpu_day_peers.py train  --preset 1b --device cuda --out train.json
    python benchmarks/gpu_day_peers.py decode --preset 1b --device cuda --out decode.json
    python benchmarks/gpu_day_peers.py train  --preset tiny --device cpu --out train.json   # the dry run

The measurement is ``benchmarks/peers.py``'s (its ``train_row`` / ``decode_row``, peaks measured in the
same process, FLOPs from torch's counter on the eager model, the bandwidth bound from the decoder-side
weights + KV cache over the measured copy bandwidth); this script picks the rows the GPU day needs, in
priority order, and rewrites its JSON after every row so that a stage stopped by its timeout keeps
what it measured. Training rows: per family ours eager, ours compiled, then the HF peer at the same
dims (HF Llama for DecLLM, HF T5Gemma for RedLLM). Decoding rows: ours compiled (static cache; CUDA
graphs on the GPU) then the HF peer, per family. Models are built directly on the device. Exit 1 if
any row failed (the row holds the error).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import peers  # noqa: E402


def table(result: dict) -> str:
    pk = result["peaks"]
    lines = [f"{result['device']}, torch {result['torch']}, preset {result['preset']}: matmul peak "
             f"{pk['matmul_tflops']:.3g} TFLOP/s ({pk['dtype']}), copy {pk['copy_gbps']:.0f} GB/s (measured here)", ""]
    if result["part"] == "train":
        lines += ["| training | tokens/s | TFLOP/s | MFU | peak GiB | step s |", "|---|---|---|---|---|---|"]
        for r in result["rows"]:
            if "error" in r:
                lines.append(f"| {r['model']} | error: {r['error'][:120]} | | | | |")
                continue
            mem = f"{r['peak_mem_gib']:.1f}" if r.get("peak_mem_gib") is not None else "-"
            lines.append(f"| {r['model']} | {r['tokens_per_s']:,.0f} | {r['tflops']:.3g} | {r['mfu']:.3f} | {mem} | "
                         f"{r['step_s']:.3f} |")
    else:
        lines += ["| decoding | new tokens/s | ms per step | bound ms | fraction of bound |", "|---|---|---|---|---|"]
        for r in result["rows"]:
            if "error" in r:
                lines.append(f"| {r['model']} | error: {r['error'][:120]} | | | |")
                continue
            lines.append(f"| {r['model']} | {r['new_tokens_per_s']:,.1f} | {r['step_ms']:.2f} | "
                         f"{r['bound_step_ms']:.3f} | {r['fraction_of_bound']:.3f} |")
    for k, v in result.get("ratios", {}).items():
        lines.append(f"- {k}: {v}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("part", choices=["train", "decode"])
    ap.add_argument("--preset", choices=sorted(peers.PRESETS), default="1b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per row (median)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    ap.add_argument("--decode-repeat", type=int, default=1)
    ap.add_argument("--families", default="decllm,redllm")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    device = torch.device(a.device)
    p = peers.PRESETS[a.preset]
    args = SimpleNamespace(steps=a.steps, warmup=a.warmup, decode_repeat=a.decode_repeat)
    torch.manual_seed(0)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    dtype = torch.bfloat16 if cuda else torch.float32
    peaks = peers.measure_peaks(device, dtype)
    import transformers

    result = {"part": a.part, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine()),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "transformers": transformers.__version__,
              "preset": a.preset, "dims": p.__dict__, "peaks": peaks, "rows": [], "train": [], "decode": []}

    def save() -> None:
        result["ratios"] = peers.ratios(result)
        result["table"] = table(result)
        a.out.write_text(json.dumps(result, indent=1))

    def built(fn):
        with torch.device(device):  # the weights are made and initialized on the device
            return fn()

    def add(name: str, fn) -> None:
        t = time.perf_counter()
        try:
            row = fn()
        except Exception as err:  # noqa: BLE001 -- the row says what failed; the stage exits 1
            row = {"model": name, "error": f"{type(err).__name__}: {err}"[:600]}
        row["wall_s"] = round(time.perf_counter() - t, 1)
        result["rows"].append(row)
        result[a.part].append(row)
        print(f"  {a.part}: {json.dumps(row)[:400]}", flush=True)
        peers.free(device)
        save()

    families = [f for f in a.families.split(",") if f]
    if a.part == "train":
        flops: dict[str, int] = {}
        for fam in families:
            def eager(fam=fam):
                row = peers.train_row(f"ours-{fam}", f"ours-{fam}", built(lambda: peers.ours(fam, p)), p, args,
                                      device, peaks)
                flops[fam] = row["flops_per_step"]
                return row

            def compiled(fam=fam):
                m = built(lambda: peers.ours(fam, p))
                m.compile_blocks()
                return peers.train_row(f"ours-{fam}+compile", f"ours-{fam}", m, p, args, device, peaks,
                                       flops=flops.get(fam))

            def peer(fam=fam):
                if fam == "decllm":
                    return peers.train_row("hf-llama", "hf-llama", built(lambda: peers.hf_llama(p)), p, args, device,
                                           peaks)
                m, attn = built(lambda: peers.hf_t5gemma(p))
                return {**peers.train_row("hf-t5gemma", "hf-t5gemma", m, p, args, device, peaks), "attention": attn}

            add(f"ours-{fam}", eager)
            add(f"ours-{fam}+compile", compiled)
            add("hf-llama" if fam == "decllm" else "hf-t5gemma", peer)
    else:
        for fam in families:
            add(f"ours-{fam}+compile", lambda fam=fam: peers.decode_row(
                f"ours-{fam}+compile", f"ours-{fam}", built(lambda: peers.ours(fam, p)), p, args, device, peaks,
                compile=True))
            if fam == "decllm":
                add("hf-llama", lambda: peers.decode_row("hf-llama", "hf-llama", built(lambda: peers.hf_llama(p)), p,
                                                         args, device, peaks))
            else:
                add("hf-t5gemma", lambda: peers.decode_row("hf-t5gemma", "hf-t5gemma",
                                                           built(lambda: peers.hf_t5gemma(p)[0]), p, args, device,
                                                           peaks))
    save()
    print(result["table"])
    failed = [r["model"] for r in result["rows"] if "error" in r]
    if failed:
        print(f"failed rows: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
