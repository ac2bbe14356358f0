"""Ours vs the peers at identical dims, in one process: HF Llama (decoder-only), HF T5Gemma
(encoder-decoder) and litgpt (decoder-only, when importable).

Training: one optimizer step (forward + loss + backward + AdamW) on random tokens, timed after
warm-up (median of ``--steps``). Reported: tokens/s (every input token: the whole sequence for the
decoder-only models, encoder + decoder tokens for the encoder-decoder ones), the step's FLOPs as
counted by ``torch.utils.flop_counter`` on the eager model (the compiled row reuses its eager
count), TFLOP/s, MFU against a *measured* matmul peak in the compute dtype, and peak memory (CUDA).

Decoding: greedy, batch ``--decode-batch``, ``--prompt-len`` prompt tokens, ``--new-tokens`` new
tokens (no early stop). New tokens/s over the whole call (prefill included), and the per-step time
(the last N - 1 steps, timed from a progress callback / HF streamer) against the bandwidth bound: bytes read per step (the
weights a decoding step uses -- every decoder-side matrix and the tied head -- plus the KV cache
at the mean context) over the *measured* device copy bandwidth. Fraction of the bound = bound
time / measured step time.

All models are built from configs with random init (nothing is downloaded). CPU: fp32, small dims
(``--preset cpu``, a few minutes on 2 cores). GPU: ``--preset 1b --device cuda`` (the study's 1B
dims: d 2048, ffn 8192, 16 heads of 128, vocab 32768, DecLLM 16 layers, RedLLM 7+7), bf16
autocast over fp32 weights with fused AdamW for training, bf16 weights for decoding.

    python benchmarks/peers.py                                  # CPU table + benchmarks/results/peers_cpu.json
    python benchmarks/peers.py --preset 1b --device cuda --compile --out results/peers_1b.json
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import platform
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

from lightning_redllm.config import ModelConfig
from lightning_redllm.generate import SamplingOptions, generate
from lightning_redllm.models import build_model

ROOT = Path(__file__).resolve().parent


@dataclass
class Preset:
    d_model: int
    ffn: int
    heads: int
    vocab: int
    dec_layers: int
    red_layers: int      # per stack
    batch: int
    seq: int             # training tokens per sequence (RedLLM/T5Gemma: split in half)
    decode_batch: int
    prompt_len: int
    new_tokens: int


PRESETS = {
    "cpu": Preset(d_model=256, ffn=1024, heads=2, vocab=8192, dec_layers=4, red_layers=2, batch=4, seq=256,
                  decode_batch=4, prompt_len=128, new_tokens=32),
    "tiny": Preset(d_model=128, ffn=256, heads=1, vocab=1024, dec_layers=2, red_layers=1, batch=2, seq=64,
                   decode_batch=2, prompt_len=16, new_tokens=8),  # smoke test of the script itself
    "1b": Preset(d_model=2048, ffn=8192, heads=16, vocab=32768, dec_layers=16, red_layers=7, batch=8, seq=2048,
                 decode_batch=16, prompt_len=1024, new_tokens=128),
}
HEAD_DIM = 128


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t)
    return out


def measure_peaks(device: torch.device, dtype: torch.dtype) -> dict:
    """Matmul rate (random data, the compute dtype) and copy bandwidth (bytes read + written)."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    mm = statistics.median(timed(lambda: a @ b, device, 10 if device.type == "cuda" else 5))
    numel = (1 << 30) // 4 if device.type == "cuda" else (1 << 26) // 4  # 1 GiB / 64 MiB of fp32
    x = torch.randn(numel, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    cp = statistics.median(timed(lambda: y.copy_(x), device, 10))
    del a, b, x, y
    return {"matmul_tflops": 2 * n ** 3 / mm / 1e12, "copy_gbps": 2 * numel * 4 / cp / 1e9,
            "matmul_n": n, "dtype": str(dtype).replace("torch.", "")}


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# ---------------------------------------------------------------------------------------------- models

def ours(family: str, p: Preset) -> torch.nn.Module:
    cfg = ModelConfig(family=family, vocab_size=p.vocab, d_model=p.d_model, n_heads=p.heads, head_dim=HEAD_DIM,
                      ffn_dim=p.ffn, n_layers=p.dec_layers, n_encoder_layers=p.red_layers,
                      n_decoder_layers=p.red_layers, max_seq_len=max(p.seq, p.prompt_len + p.new_tokens))
    m = build_model(cfg)
    m.init_weights()
    m.validate_inputs = False  # the training module checks the CPU batch; no host sync in the step
    return m


def hf_llama(p: Preset) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=p.vocab, hidden_size=p.d_model, intermediate_size=p.ffn,
                      num_hidden_layers=p.dec_layers, num_attention_heads=p.heads, num_key_value_heads=p.heads,
                      head_dim=HEAD_DIM, tie_word_embeddings=True, max_position_embeddings=4096,
                      attention_bias=False, mlp_bias=False, pad_token_id=0, bos_token_id=1, eos_token_id=None)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg)


def hf_t5gemma(p: Preset) -> tuple[torch.nn.Module, str]:
    """T5Gemma at our dims (SiLU gating, no soft-capping, so the arithmetic matches); SDPA if HF
    accepts it, else eager attention (returned as the second value)."""
    from transformers import T5GemmaConfig, T5GemmaForConditionalGeneration
    from transformers.models.t5gemma.configuration_t5gemma import T5GemmaModuleConfig

    def module(is_decoder: bool) -> T5GemmaModuleConfig:
        return T5GemmaModuleConfig(vocab_size=p.vocab, hidden_size=p.d_model, intermediate_size=p.ffn,
                                   num_hidden_layers=p.red_layers, num_attention_heads=p.heads,
                                   num_key_value_heads=p.heads, head_dim=HEAD_DIM, hidden_activation="silu",
                                   query_pre_attn_scalar=HEAD_DIM, sliding_window=4096,
                                   layer_types=["full_attention"] * p.red_layers, final_logit_softcapping=None,
                                   attn_logit_softcapping=None, max_position_embeddings=4096, is_decoder=is_decoder)

    cfg = T5GemmaConfig(encoder=module(False), decoder=module(True), vocab_size=p.vocab, tie_word_embeddings=True)
    for attn in ("sdpa", "eager"):
        try:
            cfg._attn_implementation = attn
            return T5GemmaForConditionalGeneration(cfg), attn
        except (ValueError, NotImplementedError):
            continue
    raise RuntimeError("T5Gemma builds with neither sdpa nor eager attention")


def litgpt_model(p: Preset) -> Optional[torch.nn.Module]:
    if importlib.util.find_spec("litgpt") is None:
        return None
    from litgpt import GPT, Config

    cfg = Config(n_layer=p.dec_layers, n_head=p.heads, n_query_groups=p.heads, n_embd=p.d_model, head_size=HEAD_DIM,
                 intermediate_size=p.ffn, vocab_size=p.vocab, padded_vocab_size=p.vocab, bias=False,
                 norm_class_name="RMSNorm", mlp_class_name="LLaMAMLP", rotary_percentage=1.0,
                 parallel_residual=False, block_size=max(p.seq, p.prompt_len + p.new_tokens))
    return GPT(cfg)


# ---------------------------------------------------------------------------------------------- steps

def make_loss(kind: str, model: torch.nn.Module, p: Preset, device: torch.device) -> Callable[[], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, p.vocab, (p.batch, p.seq), generator=g).to(device)
    half = p.seq // 2
    bos = torch.full_like(tokens[:, :1], 1)
    if kind == "ours-decllm":
        inp = torch.cat([bos, tokens[:, :-1]], 1)
        return lambda: model(inp, tokens, z_loss=1e-4).loss
    if kind == "ours-redllm":
        enc, dec = tokens[:, :half], torch.cat([bos, tokens[:, half:-1]], 1)
        return lambda: model(enc, dec, tokens[:, half:], z_loss=1e-4).loss
    if kind == "hf-llama":
        return lambda: model(input_ids=tokens, labels=tokens).loss
    if kind == "hf-t5gemma":
        enc, dec = tokens[:, :half], torch.cat([bos, tokens[:, half:-1]], 1)
        labels = tokens[:, half:].contiguous()
        return lambda: model(input_ids=enc, decoder_input_ids=dec, labels=labels).loss
    if kind == "litgpt":
        from litgpt.utils import chunked_cross_entropy

        inp = torch.cat([bos, tokens[:, :-1]], 1)
        return lambda: chunked_cross_entropy(model(inp), tokens, chunk_size=0)
    raise ValueError(kind)


def train_row(name: str, kind: str, model: torch.nn.Module, p: Preset, args, device, peaks,
              flops: Optional[int] = None) -> dict:
    model.to(device).train()
    cuda = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda, foreach=None if cuda else True)
    loss_fn = make_loss(kind, model, p, device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if flops is None:  # counted on this (eager) model, once
        with FlopCounterMode(display=False) as fc:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = loss_fn()
            loss.backward()
        opt.zero_grad(set_to_none=True)
        flops = fc.get_total_flops()
    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t = statistics.median(timed(step, device, args.steps))
    tokens = p.batch * p.seq
    tflops = flops / t / 1e12
    row = {"model": name, "step_s": t, "tokens_per_s": tokens / t, "flops_per_step": flops, "tflops": tflops,
           "mfu": tflops / peaks["matmul_tflops"], "params": sum(x.numel() for x in model.parameters()),
           "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30 if cuda else None}
    del opt
    return row


def decode_bytes(p: Preset, encdec: bool, elem: int) -> float:
    """Bytes one greedy decoding step must read: the decoder-side weights (tied head included) and
    the KV cache at the mean context of the run."""
    d, h, f, v = p.d_model, p.heads * HEAD_DIM, p.ffn, p.vocab
    attn, mlp = 4 * d * h, 3 * d * f
    kv_row = 2 * h * elem * p.decode_batch  # K and V of one position, all heads, the whole batch
    if encdec:
        weights = p.red_layers * (2 * attn + mlp) + v * d
        kv = p.red_layers * kv_row * (p.prompt_len + p.new_tokens / 2)  # cross K/V + self K/V
    else:
        weights = p.dec_layers * (attn + mlp) + v * d
        kv = p.dec_layers * kv_row * (p.prompt_len + p.new_tokens / 2)
    return weights * elem + kv


class StepClock:
    """Timestamps of the decoding steps, as a ``generate`` progress callback (ours) or an HF
    streamer (``put`` once per step); synchronizes the device before each reading."""

    def __init__(self, device: torch.device):
        self.device, self.times = device, []

    def __call__(self, *_):
        sync(self.device)
        self.times.append(time.perf_counter())

    put = __call__

    def end(self):
        pass

    def per_step(self, n: int) -> float:
        """Mean time of the last n - 1 steps (the prefill and the first token excluded)."""
        t = self.times[-n:]
        return (t[-1] - t[0]) / (len(t) - 1)


def decode_row(name: str, kind: str, model: torch.nn.Module, p: Preset, args, device, peaks,
               compile: bool = False) -> dict:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model.to(device=device, dtype=dtype).eval()
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(4, p.vocab, (p.decode_batch, p.prompt_len), generator=g)
    n = p.new_tokens

    def run(clock: Optional[StepClock] = None):
        if kind.startswith("ours"):
            generate(model, prompts.tolist(), bos_id=1, eos_id=None, options=SamplingOptions(max_new_tokens=n),
                     compile=compile, progress=clock)
            return
        ids = prompts.to(device)
        kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0,
                  streamer=clock)
        with torch.no_grad():
            if kind == "hf-t5gemma":
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_start_token_id=1, **kw)
            else:
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)

    run()  # warm-up (and compilation)
    totals, steps = [], []
    for _ in range(args.decode_repeat):
        clock = StepClock(device)
        sync(device)
        start = time.perf_counter()
        run(clock)
        sync(device)
        totals.append(time.perf_counter() - start)
        steps.append(clock.per_step(n))
    total, per_step = statistics.median(totals), statistics.median(steps)
    bound = decode_bytes(p, kind.endswith(("redllm", "t5gemma")), torch.finfo(dtype).bits // 8)
    bound_s = bound / (peaks["copy_gbps"] * 1e9)
    return {"model": name, "total_s": total, "new_tokens_per_s": p.decode_batch * n / total,
            "step_ms": per_step * 1e3, "bytes_per_step": bound, "bound_step_ms": bound_s * 1e3,
            "fraction_of_bound": bound_s / per_step}


# ---------------------------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per model (median)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--decode-repeat", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="add rows for our compiled training / decoding")
    ap.add_argument("--only", choices=["train", "decode", "both"], default="both")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/peers_<preset>.json)")
    args = ap.parse_args()
    device = torch.device(args.device)
    p = PRESETS[args.preset]
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peaks = measure_peaks(device, dtype)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or
              platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "preset": args.preset, "dims": p.__dict__, "peaks": peaks, "train": [], "decode": [], "notes": []}
    try:
        import transformers
        result["transformers"] = transformers.__version__
    except ImportError:
        result["transformers"] = None

    def add(section: str, fn: Callable[[], dict]) -> None:
        try:
            row = fn()
        except Exception as err:  # a peer that cannot run here is reported, not fatal
            row = {"model": getattr(fn, "label", "?"), "error": f"{type(err).__name__}: {err}"[:300]}
        result[section].append(row)
        print(f"  {section}: {row}", flush=True)
        free(device)

    def labelled(label, fn):
        fn.label = label
        return fn

    if args.only in ("train", "both"):
        flops = {}
        for fam in ("decllm", "redllm"):
            def eager(fam=fam):
                row = train_row(f"ours-{fam}", f"ours-{fam}", ours(fam, p), p, args, device, peaks)
                flops[fam] = row["flops_per_step"]
                return row
            add("train", labelled(f"ours-{fam}", eager))
            if args.compile:
                def compiled(fam=fam):
                    m = ours(fam, p)
                    m.compile_blocks()
                    return train_row(f"ours-{fam}+compile", f"ours-{fam}", m, p, args, device, peaks,
                                     flops=flops.get(fam))
                add("train", labelled(f"ours-{fam}+compile", compiled))
        add("train", labelled("hf-llama", lambda: train_row("hf-llama", "hf-llama", hf_llama(p), p, args, device,
                                                             peaks)))

        def t5():
            m, attn = hf_t5gemma(p)
            return {**train_row("hf-t5gemma", "hf-t5gemma", m, p, args, device, peaks), "attention": attn}
        add("train", labelled("hf-t5gemma", t5))
        lg = litgpt_model(p)
        if lg is None:
            result["notes"].append("litgpt not importable: skipped")
        else:
            add("train", labelled("litgpt", lambda: {**train_row("litgpt", "litgpt", lg, p, args, device, peaks),
                                                      "note": "untied head (litgpt has no tying option)"}))
            del lg
    if args.only in ("decode", "both"):
        for fam in ("decllm", "redllm"):
            add("decode", labelled(f"ours-{fam}", lambda fam=fam: decode_row(f"ours-{fam}", f"ours-{fam}",
                                                                          ours(fam, p), p, args, device, peaks)))
            if args.compile:
                add("decode", labelled(f"ours-{fam}+compile", lambda fam=fam: decode_row(
                    f"ours-{fam}+compile", f"ours-{fam}", ours(fam, p), p, args, device, peaks, compile=True)))
        add("decode", labelled("hf-llama", lambda: decode_row("hf-llama", "hf-llama", hf_llama(p), p, args, device,
                                                               peaks)))
        add("decode", labelled("hf-t5gemma", lambda: decode_row("hf-t5gemma", "hf-t5gemma", hf_t5gemma(p)[0], p,
                                                                 args, device, peaks)))
    result["ratios"] = ratios(result)
    print_table(result)
    out = Path(args.out) if args.out else ROOT / "results" / f"peers_{args.preset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


def ratios(result: dict) -> dict:
    def get(section, name, key):
        row = next((r for r in result[section] if r.get("model") == name and key in r), None)
        return row[key] if row else None

    out = {}
    pairs = [("train", "tokens_per_s", "decllm", "hf-llama"), ("train", "tokens_per_s", "decllm", "litgpt"),
             ("train", "tokens_per_s", "redllm", "hf-t5gemma"),
             ("decode", "new_tokens_per_s", "decllm", "hf-llama"),
             ("decode", "new_tokens_per_s", "redllm", "hf-t5gemma")]
    for section, key, fam, peer in pairs:
        theirs = get(section, peer, key)
        for suffix in ("", "+compile"):
            mine = get(section, f"ours-{fam}{suffix}", key)
            if mine and theirs:
                out[f"{section}: ours-{fam}{suffix} / {peer}"] = round(mine / theirs, 3)
    return out


def print_table(result: dict) -> None:
    pk = result["peaks"]
    print(f"\n{result['device']}  torch {result['torch']}  preset {result['preset']}  "
          f"matmul peak {pk['matmul_tflops']:.2f} TFLOP/s ({pk['dtype']}), copy {pk['copy_gbps']:.1f} GB/s")
    print(f"{'training':<22}{'tokens/s':>12}{'TFLOP/s':>10}{'MFU':>8}{'peak GiB':>10}")
    for r in result["train"]:
        if "error" in r:
            print(f"{r['model']:<22}  error: {r['error'][:90]}")
            continue
        mem = f"{r['peak_mem_gib']:.2f}" if r["peak_mem_gib"] is not None else "-"
        print(f"{r['model']:<22}{r['tokens_per_s']:>12.0f}{r['tflops']:>10.3f}{r['mfu']:>8.3f}{mem:>10}")
    print(f"{'decoding':<22}{'new tok/s':>12}{'step ms':>10}{'bound ms':>10}{'of bound':>10}")
    for r in result["decode"]:
        if "error" in r:
            print(f"{r['model']:<22}  error: {r['error'][:90]}")
            continue
        print(f"{r['model']:<22}{r['new_tokens_per_s']:>12.1f}{r['step_ms']:>10.2f}{r['bound_step_ms']:>10.3f}"
              f"{r['fraction_of_bound']:>10.3f}")
    for k, v in result["ratios"].items():
        print(f"  {k}: {v}")


if __name__ == "__main__":
    main()
