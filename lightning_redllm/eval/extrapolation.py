"""Length extrapolation: held-out perplexity as the context grows past the training length.

The study (arXiv 2510.26622) trains at 2048 tokens and measures perplexity on longer sequences (to
~16K) at several prefix lengths, 1 included. Here each sequence of ``length`` tokens is split at
``prefix_len``: RedLLM encodes the first ``prefix_len`` tokens and decodes the rest; DecLLM runs the
whole sequence causally and only the tokens after the prefix are scored. Both families therefore
predict exactly the same tokens from the same information, so their numbers compare directly
(:func:`lightning_redllm.eval.perplexity.score_continuations`).

Prefix lengths are integers or fractions of the sequence written as strings: ``"half"`` (= ``"1/2"``),
``"1/4"``... A ``(length, prefix)`` pair with ``prefix >= length`` is skipped.

To keep the text mix the same at every length, every source contributes the same token budget
(``tokens_per_source``) at every length, and only sources holding at least that many tokens are used.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Mapping, Optional, Sequence

import torch

from ..config import num_parameters
from ..models import LanguageModel
from .perplexity import documents_by_source, pack_source, score_continuations
from .prefixes import PrefixSpec, parse_prefix, prefix_label, resolve_prefix  # noqa: F401  (re-exported)

KIND = "lightning_redllm.extrapolation/1"


def default_lengths(train_length: int, start: int = 256, factor: int = 8) -> list[int]:
    """Doubling grid from ``start`` (or the training length, if shorter) to ``factor`` x the training length."""
    if train_length < 2 or start < 2 or factor < 1:
        raise ValueError(f"need train_length >= 2, start >= 2, factor >= 1; got {train_length}, {start}, {factor}")
    out, n = [], min(start, train_length)
    while n < factor * train_length:
        out.append(n)
        n *= 2
    out.append(factor * train_length)
    return sorted(set(out))


def extrapolation_sweep(models: Mapping[str, LanguageModel], shards, *, bos_id: int, lengths: Sequence[int],
                        prefix_lengths: Sequence[PrefixSpec] = (1, "half"), tokens_per_source: int = 8192,
                        sources: Optional[Sequence[str]] = None, batch_size: int = 4,
                        train_length: Optional[int] = None, tokenizer_fingerprint: Optional[str] = None,
                        log: Optional[Callable[[str], None]] = None) -> dict:
    """Held-out loss / perplexity / accuracy of each model for every (length, prefix) pair.

    Args:
        models: label -> model (eval mode is set and restored here).
        shards: held-out pretraining shards.
        lengths: sequence lengths (context = prefix + predicted tokens).
        prefix_lengths: prefix specs (see the module docstring); 1 is the study's hardest setting.
        tokens_per_source: tokens scored per source and length (``tokens_per_source // length``
            sequences, at least one); sources with fewer tokens are left out everywhere.
        sources: restrict to these sources (default: every source with enough tokens).
        train_length: the models' training length, recorded for the plots.
    Returns:
        A JSON-ready dict: ``kind``, ``lengths``, ``prefix_lengths``, ``sources``, ``train_length``,
        ``tokens_per_source`` and ``models: {label: {family, parameters, points: [...]}}`` where each
        point holds ``length, prefix, prefix_len, loss, ppl, acc, tokens, sequences, per_source``.
    """
    lengths = sorted({int(n) for n in lengths})
    if not lengths or lengths[0] < 2:
        raise ValueError(f"lengths must be integers >= 2, got {lengths}")
    specs = [parse_prefix(p) for p in prefix_lengths]
    if not specs:
        raise ValueError("prefix_lengths is empty")
    if tokens_per_source < max(lengths):
        raise ValueError(f"tokens_per_source ({tokens_per_source}) must be >= the longest length ({max(lengths)})")
    docs = documents_by_source(shards, tokenizer_fingerprint)
    sizes = {s: sum(int(d.numel()) for d in ds) for s, ds in docs.items()}
    chosen = sorted(sources) if sources else sorted(s for s, n in sizes.items() if n >= tokens_per_source)
    missing = [s for s in chosen if s not in docs]
    if missing:
        raise ValueError(f"sources {missing} are not in {shards!r}; found {sorted(docs)}")
    if not chosen:
        raise ValueError(f"no source holds tokens_per_source={tokens_per_source} tokens (tokens per source: "
                         f"{sizes}); lower tokens_per_source")
    short = [s for s in chosen if sizes[s] < tokens_per_source]
    if short:
        raise ValueError(f"sources {short} hold fewer than tokens_per_source={tokens_per_source} tokens ({sizes})")
    packed = {(s, n): pack_source(docs[s], n, max(1, tokens_per_source // n)) for s in chosen for n in lengths}
    result: dict = {"kind": KIND, "lengths": lengths, "prefix_lengths": specs, "sources": chosen,
                    "train_length": train_length, "tokens_per_source": tokens_per_source, "models": {}}
    for label, model in models.items():
        was_training = model.training
        model.eval()
        points = []
        start = time.perf_counter()
        try:
            for spec in specs:
                for n in lengths:
                    p = resolve_prefix(spec, n)
                    if p >= n:
                        continue
                    per_source, tot = {}, [0.0, 0, 0]
                    for s in chosen:
                        nll, cnt, cor = score_continuations(model, packed[(s, n)], p, bos_id, batch_size)
                        per_source[s] = {"loss": nll / cnt, "tokens": cnt, "sequences": int(packed[(s, n)].shape[0])}
                        tot = [tot[0] + nll, tot[1] + cnt, tot[2] + cor]
                    loss = tot[0] / tot[1]
                    points.append({"length": n, "prefix": spec, "prefix_len": p, "loss": loss,
                                   "ppl": math.exp(min(loss, 30.0)), "acc": tot[2] / tot[1], "tokens": tot[1],
                                   "sequences": sum(r["sequences"] for r in per_source.values()),
                                   "per_source": per_source})
        finally:
            model.train(was_training)
        result["models"][label] = {"family": model.config.family,
                                   "bidirectional_prefix": bool(model.config.bidirectional_prefix),
                                   "parameters": num_parameters(model.config), "points": points,
                                   "seconds": time.perf_counter() - start}
        if log:
            log(f"extrapolation {label}: {len(points)} points in {time.perf_counter() - start:.1f} s")
    return result


def format_extrapolation(result: dict) -> str:
    """Markdown: one table per prefix, rows = models, columns = lengths (perplexity)."""
    lines = []
    for spec in result["prefix_lengths"]:
        lines += [f"prefix {spec} (training length {result.get('train_length')}), perplexity:", ""]
        lines.append("| model | " + " | ".join(str(n) for n in result["lengths"]) + " |")
        lines.append("|---" * (len(result["lengths"]) + 1) + "|")
        for label, m in result["models"].items():
            by_len = {pt["length"]: pt for pt in m["points"] if pt["prefix"] == spec}
            lines.append(f"| {label} | " + " | ".join(f"{by_len[n]['ppl']:.1f}" if n in by_len else "-"
                                                      for n in result["lengths"]) + " |")
        lines.append("")
    return "\n".join(lines)


def extrapolate_main(argv: Sequence[str]) -> int:
    """``python -m lightning_redllm extrapolate --ckpt A --ckpt B ...``"""
    import argparse
    from pathlib import Path

    p = argparse.ArgumentParser(prog="python -m lightning_redllm extrapolate",
                                description="Perplexity vs context length (past the training length) at several "
                                            "prefix lengths, for RedLLM and DecLLM checkpoints; JSON + one PNG per prefix.")
    p.add_argument("--ckpt", action="append", required=True, help="checkpoint (.ckpt/.safetensors); repeat; LABEL=PATH names it")
    p.add_argument("--lengths", default=None, help="comma-separated lengths (default: 256 .. 8x --train_length, doubling)")
    p.add_argument("--train_length", type=int, default=None, help="training sequence length (default: the checkpoint's data seq_len, else 2048)")
    p.add_argument("--prefix_lengths", default="1,half", help="comma-separated: integers, 'half', fractions like 1/4")
    p.add_argument("--tokens_per_source", type=int, default=None, help="tokens scored per source and length (default: the longest length x 2)")
    p.add_argument("--shards", default=None, help="held-out pretraining shards (default: the bundled validation shards)")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", required=True, help="output folder: extrapolation.json and extrapolation_*.png")
    a = p.parse_args(list(argv))
    from ..generate.load import load_for_inference
    from ..data.shards import bundled_shards
    from .plots import plot_extrapolation, write_results

    models, tok, train_len = {}, None, a.train_length
    for item in a.ckpt:
        label, _, path = item.rpartition("=") if "=" in item else ("", "", item)
        model, tok, cfg = load_for_inference(path, a.tokenizer, a.device)
        models[label or f"{cfg.family}:{Path(path).parent.parent.name or Path(path).stem}"] = model
        train_len = train_len or checkpoint_seq_len(path)
    train_len = train_len or 2048
    try:
        lengths = [int(x) for x in a.lengths.split(",")] if a.lengths else default_lengths(train_len)
    except ValueError:
        p.error(f"--lengths must be comma-separated integers, got {a.lengths!r}")
    specs = [x.strip() for x in a.prefix_lengths.split(",") if x.strip()]
    res = extrapolation_sweep(models, a.shards or bundled_shards("pretrain", "val"), bos_id=tok.bos_id,
                              lengths=lengths, prefix_lengths=specs, train_length=train_len,
                              tokens_per_source=a.tokens_per_source or 2 * max(lengths), batch_size=a.batch_size,
                              tokenizer_fingerprint=tok.fingerprint, log=print)
    write_results(a.out, "extrapolation", res, format_extrapolation(res), plot_extrapolation)
    return 0


def checkpoint_seq_len(path) -> Optional[int]:
    """The pretraining ``seq_len`` recorded in a Lightning checkpoint's datamodule hyperparameters (None if absent)."""
    from pathlib import Path

    if Path(path).suffix != ".ckpt":
        return None
    from ..reliability import load_torch_file

    dm = load_torch_file(path, mmap=True).get("datamodule_hyper_parameters") or {}
    n = dm.get("seq_len")
    return int(n) if n else None
