"""Inference efficiency: measured prefill time, per-token decode latency and throughput at several
batch sizes (random weights: speed does not depend on them), KV-cache bytes, and analytic FLOPs.

Measurement goes through the public :func:`lightning_redllm.generate.generate` with ``eos_id=None``
(every row generates exactly ``new_tokens``): ``prefill`` is the time of a 1-token generation (the
prompt's forward pass and the first token), the decode latency is
``(t(new_tokens) - t(1)) / (new_tokens - 1)`` per step, and throughput is
``batch * new_tokens / t(new_tokens)``; each is the median of ``repeats`` runs after one warm-up.
The two generations are timed in pairs, one decode estimate per pair; their spread is reported
(``±`` half the interquartile range -- half the range below 4 pairs -- relative to the median). A
median that is not positive or a spread over :data:`MAX_DECODE_SPREAD` is measured again with twice as
many pairs and, if still so, reported as unreliable (``decode_ms_per_token`` None, the table says
why), never as a number: the difference of two noisy timings can be zero or negative.

Analytic FLOPs (2 per multiply-add, matmuls only, attention products in full, as
``config.forward_flops_per_sequence``), for a prompt of P tokens and N generated tokens:

* DecLLM prefill: P + 1 tokens (bos) through every layer, the LM head on the last position only;
  decode step i (i = 1..N-1): one token through every layer attending to P + 1 + i keys, + head.
* RedLLM prefill: P tokens through the encoder, the cross-attention K/V of every decoder layer
  (computed once), and the decoder step on bos; decode step i: one token through the decoder
  (self-attention over 1 + i keys, cross-attention over P keys), + head.

KV cache, as ``generate`` allocates it: DecLLM ``layers x 2 x B x kv_heads x head_dim x (P + 1 + N)``;
RedLLM the decoder self-attention cache over ``N + 1`` positions plus the cross-attention K/V over
the P encoder positions.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional, Sequence

import torch

from ..config import ModelConfig, num_parameters

KIND = "lightning_redllm.efficiency/1"
#: largest accepted spread of the per-pair decode estimates: half their range / their median
MAX_DECODE_SPREAD = 0.5


# ------------------------------------------------------------------------------------------------
# analytic


def _proj_self(cfg: ModelConfig) -> int:
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    return 2 * (cfg.d_model * (q + 2 * kv) + q * cfg.d_model)  # per token


def _mlp(cfg: ModelConfig) -> int:
    return 2 * 3 * cfg.d_model * cfg.ffn_dim  # per token


def _attn(cfg: ModelConfig, queries: int, keys: int) -> int:
    return 2 * 2 * queries * keys * cfg.n_heads * cfg.head_dim  # QK^T and AV


def _head(cfg: ModelConfig) -> int:
    return 2 * cfg.d_model * cfg.vocab_size  # per token


def _cross_q_o(cfg: ModelConfig) -> int:
    q = cfg.n_heads * cfg.head_dim
    return 2 * (cfg.d_model * q + q * cfg.d_model)  # per decoder token


def _cross_kv(cfg: ModelConfig) -> int:
    return 2 * cfg.d_model * 2 * cfg.n_kv_heads * cfg.head_dim  # per encoder token


def prefill_flops(cfg: ModelConfig, prompt_len: int) -> int:
    """FLOPs from the prompt to the logits of the first generated token."""
    if prompt_len < 1:
        raise ValueError(f"prompt_len must be >= 1, got {prompt_len}")
    if cfg.family == "decllm":
        t = prompt_len + 1  # bos
        return cfg.n_layers * (t * (_proj_self(cfg) + _mlp(cfg)) + _attn(cfg, t, t)) + _head(cfg)
    s = prompt_len
    enc = cfg.n_encoder_layers * (s * (_proj_self(cfg) + _mlp(cfg)) + _attn(cfg, s, s))
    cross_kv = cfg.n_decoder_layers * s * _cross_kv(cfg)
    return enc + cross_kv + decode_step_flops(cfg, prompt_len, 0)


def decode_step_flops(cfg: ModelConfig, prompt_len: int, step: int) -> int:
    """FLOPs of decoding with the ``step``-th generated token as input (step 0 = RedLLM's bos step)."""
    if cfg.family == "decllm":
        keys = prompt_len + 1 + step
        return cfg.n_layers * (_proj_self(cfg) + _mlp(cfg) + _attn(cfg, 1, keys)) + _head(cfg)
    keys = 1 + step
    per_layer = _proj_self(cfg) + _attn(cfg, 1, keys) + _cross_q_o(cfg) + _attn(cfg, 1, prompt_len) + _mlp(cfg)
    return cfg.n_decoder_layers * per_layer + _head(cfg)


def inference_flops(cfg: ModelConfig, prompt_len: int, new_tokens: int) -> dict:
    """Prefill, mean decode FLOPs per generated token, and the total per example."""
    if new_tokens < 1:
        raise ValueError(f"new_tokens must be >= 1, got {new_tokens}")
    pre = prefill_flops(cfg, prompt_len)
    decode = [decode_step_flops(cfg, prompt_len, i) for i in range(1, new_tokens)]
    total = pre + sum(decode)
    return {"prefill_flops": pre, "decode_flops_per_token": (sum(decode) / len(decode)) if decode else 0.0,
            "flops_per_example": total, "flops_per_generated_token": total / new_tokens}


def kv_cache_bytes(cfg: ModelConfig, batch: int, prompt_len: int, new_tokens: int, bytes_per_value: int = 4) -> int:
    """Bytes of the KV cache ``generate`` holds for a batch (see the module docstring)."""
    per_pos = 2 * batch * cfg.n_kv_heads * cfg.head_dim * bytes_per_value  # K and V, one layer, one position
    if cfg.family == "decllm":
        return cfg.n_layers * per_pos * (prompt_len + 1 + new_tokens)
    return cfg.n_decoder_layers * per_pos * (new_tokens + 1 + prompt_len)


# ------------------------------------------------------------------------------------------------
# measured


def _time_generate(model, prompts, new_tokens: int, bos_id: int, compile: bool) -> float:
    from ..generate import SamplingOptions, generate

    kwargs = {"compile": True} if compile else {}
    sync = torch.cuda.synchronize if model.embed.weight.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    out = generate(model, prompts, bos_id=bos_id, eos_id=None, options=SamplingOptions(max_new_tokens=new_tokens),
                   **kwargs)
    sync()
    elapsed = time.perf_counter() - start
    assert all(len(o) == new_tokens for o in out), "eos_id=None must generate every token"
    return elapsed


@torch.no_grad()
def benchmark_model(cfg: ModelConfig, *, batch_sizes: Sequence[int] = (1, 4, 16), prompt_len: int = 128,
                    new_tokens: int = 32, repeats: int = 3, device: str = "cpu", dtype: torch.dtype = torch.float32,
                    seed: int = 0, compile: bool = False, name: Optional[str] = None) -> dict:
    """Measured and analytic inference costs of one model configuration (random weights)."""
    from ..models import build_model

    if new_tokens < 2:
        raise ValueError(f"new_tokens must be >= 2 to separate prefill from decode, got {new_tokens}")
    if repeats < 1 or not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"need repeats >= 1 and batch sizes >= 1, got {repeats}, {list(batch_sizes)}")
    torch.manual_seed(seed)
    model = build_model(cfg)
    model.init_weights()
    model = model.to(device=device, dtype=dtype).eval()
    gen = torch.Generator().manual_seed(seed)
    bytes_per_value = torch.finfo(dtype).bits // 8
    row = {"name": name or cfg.name or cfg.family, "family": cfg.family, "config": cfg.to_dict(),
           "parameters": num_parameters(cfg), **inference_flops(cfg, prompt_len, new_tokens), "batches": []}
    for b in batch_sizes:
        prompts = torch.randint(4, cfg.vocab_size, (b, prompt_len), generator=gen).tolist()
        for n in (1, new_tokens):  # warm-up of both measured shapes (allocations, RoPE tables, compilation)
            _time_generate(model, prompts, n, bos_id=2, compile=compile)
        t1s: list[float] = []
        tns: list[float] = []

        def measure(pairs: int) -> dict:
            for _ in range(pairs):  # paired: a slow spell of the machine hits both timings of a pair
                t1s.append(_time_generate(model, prompts, 1, 2, compile))
                tns.append(_time_generate(model, prompts, new_tokens, 2, compile))
            return decode_estimate(t1s, tns, new_tokens)

        dec = measure(repeats)
        if not dec["decode_reliable"]:
            dec = measure(2 * repeats)  # noisy or broken: measure longer before reporting
        tn = statistics.median(tns)
        ms = dec["decode_ms_per_token"]
        row["batches"].append({
            "batch_size": b, "prefill_s": statistics.median(t1s), **dec, "total_s": tn,
            "tokens_per_s": b * new_tokens / tn, "decode_tokens_per_s": 1000 * b / ms if ms else None,
            "kv_cache_bytes": kv_cache_bytes(cfg, b, prompt_len, new_tokens, bytes_per_value),
        })
    return row


def decode_estimate(t1s: Sequence[float], tns: Sequence[float], new_tokens: int) -> dict:
    """Per-step decode latency from paired timings of 1- and ``new_tokens``-token generations:
    ``decode_ms_per_token`` (median over the pairs; None when unreliable), ``decode_ms_spread`` (half
    the interquartile range -- half the range below 4 pairs -- over the median; None for one pair),
    ``decode_pairs``, ``decode_reliable`` and, when not, ``decode_note`` saying why."""
    per = sorted(1000 * (tn - t1) / (new_tokens - 1) for t1, tn in zip(t1s, tns))
    med = statistics.median(per)
    if len(per) >= 4:
        q1, _, q3 = statistics.quantiles(per, n=4, method="inclusive")
        width, what = q3 - q1, "interquartile "
    else:
        width, what = per[-1] - per[0], ""
    spread = width / 2 / med if med > 0 and len(per) > 1 else None
    note = None
    if med <= 0:
        bad = sum(1 for x in per if x <= 0)
        note = f"t({new_tokens}) <= t(1) in {bad} of {len(per)} timing pairs"
    elif spread is not None and spread > MAX_DECODE_SPREAD:
        note = f"{what}spread ±{100 * spread:.0f}% across {len(per)} timing pairs"
    return {"decode_ms_per_token": med if note is None else None, "decode_ms_spread": spread,
            "decode_pairs": len(per), "decode_reliable": note is None, "decode_note": note}


def format_decode(b: dict) -> str:
    """The table's decode cell: ``1.23 ±4%``, or ``unreliable (why)``."""
    if not b.get("decode_reliable", True) or b.get("decode_ms_per_token") is None:
        return f"unreliable ({b.get('decode_note') or 'no measurement'})"
    spread = b.get("decode_ms_spread")
    return f"{b['decode_ms_per_token']:.2f}" + (f" ±{100 * spread:.0f}%" if spread is not None else " (1 pair)")


def resolve_presets(entries: Sequence, families: Sequence[str] = ("redllm", "decllm")) -> list[tuple[str, ModelConfig]]:
    """Entries: a size name (``tiny``, ``150m``: both families), a preset (``decllm-1b``), or a dict
    ``{name, preset: size-or-preset, overrides: {...}}`` (both families unless the preset names one)."""
    out = []
    for e in entries:
        if isinstance(e, str):
            e = {"name": e, "preset": e}
        if not isinstance(e, dict) or "preset" not in e:
            raise ValueError(f"an efficiency preset is a name or a dict with 'preset' (and 'overrides'), got {e!r}")
        preset = e["preset"]
        fams = [preset.split("-", 1)[0]] if preset.split("-", 1)[0] in ("redllm", "decllm") else list(families)
        size = preset.split("-", 1)[1] if preset.split("-", 1)[0] in ("redllm", "decllm") else preset
        for fam in fams:
            cfg = ModelConfig.from_name(f"{fam}-{size}", **(e.get("overrides") or {}))
            out.append((f"{fam}-{e.get('name', size)}", cfg))
    return out


def efficiency_benchmark(entries: Sequence, *, batch_sizes: Sequence[int] = (1, 4, 16), prompt_len: int = 128,
                         new_tokens: int = 32, repeats: int = 3, device: str = "cpu", dtype: str = "float32",
                         compile: bool = False, log: Optional[Callable[[str], None]] = None) -> dict:
    torch_dtype = getattr(torch, dtype)
    res = {"kind": KIND, "device": device, "dtype": dtype, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "workload": {"prompt_len": prompt_len, "new_tokens": new_tokens, "repeats": repeats}, "models": []}
    for name, cfg in resolve_presets(entries):
        start = time.perf_counter()
        row = benchmark_model(cfg, batch_sizes=batch_sizes, prompt_len=prompt_len, new_tokens=new_tokens,
                              repeats=repeats, device=device, dtype=torch_dtype, compile=compile, name=name)
        res["models"].append(row)
        if log:
            best = max(row["batches"], key=lambda r: r["tokens_per_s"])
            log(f"efficiency {name}: {row['parameters'] / 1e6:.2f}M params, best {best['tokens_per_s']:.0f} tok/s "
                f"at batch {best['batch_size']} ({time.perf_counter() - start:.1f} s)")
    return res


def format_efficiency(res: dict) -> str:
    w = res["workload"]
    lines = [f"prompt {w['prompt_len']} tokens + {w['new_tokens']} new, {res['device']} {res['dtype']}, random weights",
             "", "| model | params | batch | prefill (ms) | decode (ms/step) | tokens/s | KV cache (MiB) | "
                 "prefill GFLOPs | decode MFLOPs/token |", "|---|---|---|---|---|---|---|---|---|"]
    for m in res["models"]:
        for b in m["batches"]:
            lines.append(f"| {m['name']} | {m['parameters'] / 1e6:.2f}M | {b['batch_size']} | {1000 * b['prefill_s']:.1f} | "
                         f"{format_decode(b)} | {b['tokens_per_s']:.0f} | "
                         f"{b['kv_cache_bytes'] / 2 ** 20:.2f} | {m['prefill_flops'] / 1e9:.3f} | "
                         f"{m['decode_flops_per_token'] / 1e6:.2f} |")
    lines += ["", "decode: median per-step latency (t(new) - t(1)) / (new - 1) over paired timings, ± half their "
                  "interquartile range (the range below 4 pairs); unreliable when the median is not positive or the "
                  f"spread exceeds ±{100 * MAX_DECODE_SPREAD:.0f}% after a second, longer measurement"]
    return "\n".join(lines)


def quality_points(evaluated: Sequence[dict], prompt_len: int, new_tokens: int) -> list[dict]:
    """``{label, family, config (ModelConfig or dict), value}`` -> points for the quality-vs-FLOPs plot."""
    out = []
    for e in evaluated:
        cfg = e["config"] if isinstance(e["config"], ModelConfig) else ModelConfig.from_dict(e["config"])
        fam = "decllm+biattn" if cfg.family == "decllm" and cfg.bidirectional_prefix else cfg.family
        out.append({"label": e["label"], "family": e.get("family", fam), "value": e["value"],
                    "inference_flops": inference_flops(cfg, prompt_len, new_tokens)["flops_per_example"]})
    return out


def efficiency_main(argv: Sequence[str]) -> int:
    """``python -m lightning_redllm efficiency --presets tiny,150m --out DIR``"""
    import argparse

    p = argparse.ArgumentParser(prog="python -m lightning_redllm efficiency",
                                description="Inference cost per preset and family (random weights): prefill time, "
                                            "decode latency, tokens/s per batch size, KV-cache bytes, analytic FLOPs.")
    p.add_argument("--presets", default="tiny", help="comma-separated sizes (tiny,150m,1b...) or presets (decllm-1b)")
    p.add_argument("--batch_sizes", default="1,4,16")
    p.add_argument("--prompt_len", type=int, default=128)
    p.add_argument("--new_tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--compile", action="store_true", help="use generate(..., compile=True) where available")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", required=True, help="output folder: efficiency.json and efficiency_throughput.png")
    a = p.parse_args(list(argv))
    try:
        batch_sizes = [int(x) for x in a.batch_sizes.split(",") if x.strip()]
    except ValueError:
        p.error(f"--batch_sizes must be comma-separated integers, got {a.batch_sizes!r}")
    res = efficiency_benchmark([x.strip() for x in a.presets.split(",") if x.strip()], batch_sizes=batch_sizes,
                               prompt_len=a.prompt_len, new_tokens=a.new_tokens, repeats=a.repeats, device=a.device,
                               dtype=a.dtype, compile=a.compile, log=print)
    from .plots import plot_efficiency, write_results

    write_results(a.out, "efficiency", res, format_efficiency(res), plot_efficiency)
    return 0
