"""Write shard sets in the ``data_pipelines`` format from in-memory token arrays.

For tests, benchmarks and experiments without a tokenizer; real corpora come from ``data_pipelines``.
"""
from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import webdataset as wds

from .manifest import new_manifest, write_manifest

DEFAULT_TOKENIZER = {
    "fingerprint": "sha256:synthetic", "vocab_size": 4096, "bos_id": 2, "eos_id": 3, "pad_id": 0, "unk_id": 1,
}


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _write(
    out_dir: str | os.PathLike,
    samples: Sequence[tuple[str, dict[str, bytes], dict[str, int]]],  # (source, members, counts)
    *,
    docs_per_shard: int,
    kind: str,
    dtype: str,
    tokenizer: dict | None,
    manifest: bool,
) -> list[str]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[str] = []
    entries: list[dict] = []
    per_source_index: dict[str, int] = {}
    for start in range(0, len(samples), docs_per_shard):
        name = f"shard-{len(paths):06d}.tar"
        path = out / name
        sources: dict[str, dict[str, int]] = {}
        tokens = 0
        with wds.TarWriter(str(path)) as writer:
            for source, members, counts in samples[start : start + docs_per_shard]:
                index = per_source_index.get(source, 0)
                per_source_index[source] = index + 1
                writer.write({"__key__": f"{source}-{index:09d}", **members})
                src = sources.setdefault(source, {"documents": 0, "tokens": 0})
                src["documents"] += 1
                src["tokens"] += counts["tokens"]
                tokens += counts["tokens"]
        paths.append(str(path))
        entries.append({"name": name, "documents": len(samples[start : start + docs_per_shard]),
                        "tokens": tokens, "sources": sources})
    if manifest:
        write_manifest(out, new_manifest(kind, tokenizer or DEFAULT_TOKENIZER, dtype, entries))
    return paths


def write_pretrain_shards(
    out_dir: str | os.PathLike,
    docs: Sequence[tuple[str, np.ndarray]],
    *,
    docs_per_shard: int = 100,
    dtype: str = "uint16",
    tokenizer: dict | None = None,
    manifest: bool = True,
) -> list[str]:
    """Write ``[(source, tokens_with_eos)]`` as pretraining shards (+ manifest); returns the shard paths."""
    samples = [
        (src, {"tokens.npy": npy_bytes(np.asarray(toks, dtype=dtype)), "source.txt": src.encode()},
         {"tokens": len(toks)})
        for src, toks in docs
    ]
    return _write(out_dir, samples, docs_per_shard=docs_per_shard, kind="pretrain", dtype=dtype,
                  tokenizer=tokenizer, manifest=manifest)


def write_instruct_shards(
    out_dir: str | os.PathLike,
    examples: Sequence[tuple[str, np.ndarray, np.ndarray]],
    *,
    docs_per_shard: int = 100,
    dtype: str = "uint16",
    tokenizer: dict | None = None,
    manifest: bool = True,
) -> list[str]:
    """Write ``[(task, inputs, targets)]`` (no eos, untruncated) as instruction shards (+ manifest)."""
    samples = [
        (task, {"inputs.npy": npy_bytes(np.asarray(i, dtype=dtype)), "targets.npy": npy_bytes(np.asarray(t, dtype=dtype)),
                "task.txt": task.encode()}, {"tokens": len(i) + len(t)})
        for task, i, t in examples
    ]
    return _write(out_dir, samples, docs_per_shard=docs_per_shard, kind="instruct", dtype=dtype,
                  tokenizer=tokenizer, manifest=manifest)


def random_documents(
    n: int, *, sources: Sequence[str] = ("web",), min_len: int = 1, max_len: int = 64, eos_id: int = 3,
    vocab_size: int = 4096, seed: int = 0,
) -> list[tuple[str, np.ndarray]]:
    """``n`` random documents (tokens in [4, vocab_size), eos at the end), sources round-robin."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        toks = rng.integers(4, vocab_size, size=int(rng.integers(min_len, max_len + 1)))
        docs.append((sources[i % len(sources)], np.append(toks, eos_id)))
    return docs
