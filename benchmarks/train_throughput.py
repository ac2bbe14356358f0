"""Training throughput and MFU, RedLLM vs DecLLM side by side, plus the fused-loss memory saving.

For each preset and family: one optimizer step (forward + backward + AdamW) on random tokens of
``--seq-len`` (RedLLM split at half), bf16 autocast over fp32 master weights, timed after warm-up.
Reports tokens/s (input tokens: the whole 2048-token sequence for both families), model FLOPs per
step from ``config.training_flops_per_sequence``, MFU against the card's dense bf16 peak, and peak
memory. Then, at one preset, the chunked fused cross-entropy vs the naive full-logits loss.

    python benchmarks/train_throughput.py --device cuda --presets 150m,1b --batch 8
    python benchmarks/train_throughput.py            # CPU, tiny presets (a smoke run)
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from lightning_redllm.config import ModelConfig, training_flops_per_sequence
from lightning_redllm.models import build_model
from lightning_redllm.nn import reference_cross_entropy

# dense bf16 tensor-core peaks (no sparsity)
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362e12}


def peak_flops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model, family: str, tokens: torch.Tensor, prefix: int, naive_loss: bool, device: torch.device):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    bos = torch.full_like(tokens[:, :1], 2)
    if family == "decllm":
        inputs = dict(input_ids=torch.cat([bos, tokens[:, :-1]], 1))
        labels = tokens
    else:
        inputs = dict(encoder_input_ids=tokens[:, :prefix], decoder_input_ids=torch.cat([bos, tokens[:, prefix:-1]], 1))
        labels = tokens[:, prefix:]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def call(**kw):
        if family == "decllm":
            return model(inputs["input_ids"], **kw)
        return model(inputs["encoder_input_ids"], inputs["decoder_input_ids"], **kw)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            if naive_loss:
                logits = call(return_logits=True).logits
                loss = reference_cross_entropy(logits, labels, z_loss=1e-4)
            else:
                loss = call(labels=labels, z_loss=1e-4).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def measure(preset: str, family: str, args, device: torch.device, naive_loss: bool = False) -> dict:
    cfg = ModelConfig.from_name(f"{family}-{preset}")
    torch.manual_seed(0)
    with torch.device(device):
        model = build_model(cfg)
    model.init_weights()
    model.validate_inputs = False  # no host sync inside the timed step
    if args.compile:
        model = torch.compile(model)
    tokens = torch.randint(0, min(cfg.vocab_size, 4000), (args.batch, args.seq_len), device=device)
    prefix = args.seq_len // 2
    step = make_step(model, family, tokens, prefix, naive_loss, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync(device)
    dt = (time.perf_counter() - t0) / args.steps
    flops = args.batch * training_flops_per_sequence(cfg, args.seq_len, prefix if family == "redllm" else None)
    peak = peak_flops(device, args.peak_tflops)
    row = {
        "preset": preset, "family": family, "loss_impl": "naive" if naive_loss else "fused-chunked",
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "batch": args.batch, "seq_len": args.seq_len, "step_s": round(dt, 4),
        "tokens_per_s": round(args.batch * args.seq_len / dt),
        "model_tflops_per_step": round(flops / 1e12, 2),
        "achieved_tflops": round(flops / dt / 1e12, 1),
        "mfu": round(flops / dt / peak, 3) if peak else None,
        "peak_mem_GiB": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        "loss": round(float(loss), 4),
    }
    del model, step
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def print_table(rows: list[dict]) -> None:
    cols = ["preset", "family", "loss_impl", "params_M", "batch", "step_s", "tokens_per_s", "achieved_tflops",
            "mfu", "peak_mem_GiB"]
    widths = [max(len(c), *(len(str(r.get(c))) for r in rows)) for c in cols]
    print(" | ".join(c.ljust(w) for c, w in zip(cols, widths)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(str(r.get(c)).ljust(w) for c, w in zip(cols, widths)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--presets", default=None, help="comma list (default: 150m,1b on GPU, tiny on CPU)")
    p.add_argument("--seq-len", type=int, default=None, help="default 2048 on GPU, 256 on CPU")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the card's bf16 peak")
    p.add_argument("--loss-compare-preset", default=None, help="preset for fused vs naive loss (default: last)")
    p.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = p.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    presets = (args.presets or ("150m,1b" if gpu else "tiny")).split(",")
    args.seq_len = args.seq_len or (2048 if gpu else 256)
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
    rows = []
    for preset in presets:
        for family in ("decllm", "redllm"):
            rows.append(measure(preset, family, args, device))
            print(rows[-1], flush=True)
    cmp_preset = args.loss_compare_preset or presets[-1]
    rows.append(measure(cmp_preset, "decllm", args, device, naive_loss=True))
    print(rows[-1], flush=True)
    print()
    print_table(rows)
    ratios = {}
    for preset in presets:
        d = next(r for r in rows if r["preset"] == preset and r["family"] == "decllm" and r["loss_impl"] != "naive")
        r_ = next(r for r in rows if r["preset"] == preset and r["family"] == "redllm")
        ratios[preset] = {"redllm_over_decllm_tokens_per_s": round(r_["tokens_per_s"] / d["tokens_per_s"], 2),
                          "redllm_over_decllm_flops_per_step": round(r_["model_tflops_per_step"] / d["model_tflops_per_step"], 2)}
    print("\nRedLLM / DecLLM:", json.dumps(ratios))
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if gpu else platform.processor() or platform.machine(),
            "torch": torch.__version__, "compile": args.compile}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows, "ratios": ratios}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
