"""Data-loader throughput: packed + split pretraining stream with the prefix-LM objective.

Builds synthetic pretokenized shards in the ``data_pipelines`` format (or reads ``--shards``), runs
``PretrainDataset`` -> ``ResumableDataLoader`` -> ``objectives.prefix_lm`` (seq_len 2048, prefix
1024) with 0, 1 and 2 dataloader workers, prints tokens/s (total and per worker) and writes JSON.

    python benchmarks/data_loader.py --out benchmarks/results/data_loader.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_redllm.data import PretrainDataset, ResumableDataLoader, prefix_lm  # noqa: E402
from lightning_redllm.data.synthetic import write_pretrain_shards  # noqa: E402

EOS, BOS = 3, 2


def build_shards(out_dir: str, *, shards: int, docs_per_shard: int, mean_len: int, seed: int = 0) -> int:
    """Synthetic corpus: log-normal document lengths around ``mean_len`` tokens, uint16, 3 sources."""
    rng = np.random.default_rng(seed)
    n = shards * docs_per_shard
    lengths = np.clip(rng.lognormal(np.log(mean_len) - 0.5, 1.0, n).astype(int), 1, 32 * mean_len)
    sources = ("common_crawl", "c4", "github")
    docs = [(sources[i % 3], np.append(rng.integers(4, 4096, int(k), dtype=np.uint16), EOS).astype(np.uint16))
            for i, k in enumerate(lengths)]
    write_pretrain_shards(out_dir, docs, docs_per_shard=docs_per_shard)
    return int(sum(len(d) for _, d in docs))


def run(shards: str, *, num_workers: int, batch_size: int, seq_len: int, prefix: int, shuffle_buffer: int,
        seconds: float, warmup_batches: int) -> dict:
    ds = PretrainDataset(shards, seq_len=seq_len, shuffle_buffer=shuffle_buffer, seed=0, rank=0, world_size=1)
    loader = ResumableDataLoader(ds, batch_size=batch_size, num_workers=num_workers,
                                 prefetch_factor=4 if num_workers else None)
    it = iter(loader)
    for _ in range(warmup_batches):  # worker start-up, first shard opens, buffer fill
        prefix_lm(next(it)["tokens"], prefix, BOS)
    batches = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        out = prefix_lm(next(it)["tokens"], prefix, BOS)  # (B, P) encoder, (B, L-P) decoder
        assert out["labels"].shape == (batch_size, seq_len - prefix)
        batches += 1
    elapsed = time.perf_counter() - start
    state_bytes = len(repr(loader.state_dict()))
    del it, loader
    tokens = batches * batch_size * seq_len
    return {
        "num_workers": num_workers, "batches": batches, "tokens": tokens, "seconds": elapsed,
        "tokens_per_s": tokens / elapsed, "tokens_per_s_per_worker": tokens / elapsed / max(1, num_workers),
        "state_dict_chars": state_bytes,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", help="shard pattern to read instead of building synthetic shards")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--prefix", type=int, default=1024)
    p.add_argument("--shuffle-buffer", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=8.0, help="measured time per configuration")
    p.add_argument("--warmup-batches", type=int, default=20)
    p.add_argument("--num-shards", type=int, default=8)
    p.add_argument("--docs-per-shard", type=int, default=2000)
    p.add_argument("--mean-doc-len", type=int, default=800)
    p.add_argument("--out", default="benchmarks/results/data_loader.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        shards, corpus_tokens = args.shards, None
        if shards is None:
            t0 = time.perf_counter()
            corpus_tokens = build_shards(tmp, shards=args.num_shards, docs_per_shard=args.docs_per_shard,
                                         mean_len=args.mean_doc_len)
            shards = tmp
            print(f"built {args.num_shards} shards, {corpus_tokens / 1e6:.1f}M tokens in {time.perf_counter() - t0:.1f}s")
        results = [
            run(shards, num_workers=w, batch_size=args.batch_size, seq_len=args.seq_len, prefix=args.prefix,
                shuffle_buffer=args.shuffle_buffer, seconds=args.seconds, warmup_batches=args.warmup_batches)
            for w in args.workers
        ]

    print(f"\n{'workers':>7} | {'tokens/s':>12} | {'tokens/s/worker':>15} | {'batches':>7}")
    print("-" * 52)
    for r in results:
        print(f"{r['num_workers']:>7} | {r['tokens_per_s'] / 1e6:>10.2f} M | {r['tokens_per_s_per_worker'] / 1e6:>13.2f} M "
              f"| {r['batches']:>7}")
    report = {
        "benchmark": "data_loader", "pipeline": "PretrainDataset -> ResumableDataLoader -> prefix_lm",
        "config": vars(args) | {"corpus_tokens": corpus_tokens},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__},
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
