"""Held-out perplexity per source and across sequence lengths (length extrapolation).

Documents of each source are packed on their own into non-overlapping sequences of ``seq_len``
tokens (eos between documents, as in training), then scored with the training objective of the
family: DecLLM predicts every token; RedLLM predicts the second part of each sequence from the
first (``prefix_len``, default half). A DecLLM tuned with ``bidirectional_prefix`` ("DecLLM +
BiAttn") is scored the way it was tuned: the first ``prefix_len`` tokens attend bidirectionally and
only the rest is predicted, like RedLLM. Reported: nats per predicted token, perplexity, token
accuracy — per source and overall, for every requested length. Lengths above the training length
measure extrapolation (RoPE positions past those seen in training).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterator, Optional, Sequence

import torch

from ..data.objectives import causal_lm, prefix_causal_lm, prefix_lm
from ..data.shards import decode_npy, iter_shard, open_shards, source_of
from ..models import DecLLM, LanguageModel, RedLLM


def iter_documents(shards, tokenizer_fingerprint: Optional[str] = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(source, token ids) of every pretraining document in ``shards``, in shard order."""
    shard_set = open_shards(shards, kind="pretrain", expected_fingerprint=tokenizer_fingerprint)
    for url in shard_set.urls:
        for _, key, parts in iter_shard(url, ("tokens.npy",)):
            yield source_of(key), torch.from_numpy(decode_npy(parts["tokens.npy"], f"{url}:{key}").astype("int64"))


def _packed(docs: Sequence[torch.Tensor], seq_len: int, max_sequences: Optional[int]) -> Optional[torch.Tensor]:
    flat = torch.cat(list(docs)) if docs else torch.empty(0, dtype=torch.long)
    n = flat.numel() // seq_len
    if max_sequences is not None:
        n = min(n, max_sequences)
    return flat[: n * seq_len].view(n, seq_len) if n else None


@torch.no_grad()
def score_sequences(model: LanguageModel, tokens: torch.Tensor, bos_id: int, batch_size: int,
                    prefix_len: Optional[int] = None) -> tuple[float, int, int]:
    """(summed nll, predicted tokens, correct argmax) over packed ``tokens`` (N, L), each family with its
    training objective: RedLLM (and DecLLM + BiAttn) predict the tokens after ``prefix_len`` (default
    half), plain DecLLM predicts every token."""
    return _score(model, tokens, bos_id, batch_size, prefix_len or tokens.shape[1] // 2, causal_scores_prefix=True)


def _score(model: LanguageModel, tokens: torch.Tensor, bos_id: int, batch_size: int, prefix_len: int, *,
           causal_scores_prefix: bool) -> tuple[float, int, int]:
    """The one scoring loop: RedLLM encodes ``tokens[:, :prefix_len]`` and decodes the rest; DecLLM +
    BiAttn attends that prefix bidirectionally and predicts the rest; plain DecLLM runs causally and
    scores the prefix positions too only when ``causal_scores_prefix``."""
    device = model.embed.weight.device
    nll_sum, count, correct = 0.0, 0, 0
    for start in range(0, tokens.shape[0], batch_size):
        chunk = tokens[start:start + batch_size].to(device)  # (B, L)
        if isinstance(model, RedLLM):
            b = prefix_lm(chunk, prefix_len, bos_id)
            out = model(b["encoder_input_ids"], b["decoder_input_ids"], b["labels"])
        elif isinstance(model, DecLLM) and model.config.bidirectional_prefix:
            b = prefix_causal_lm(chunk, prefix_len, bos_id)
            out = model(b["input_ids"], b["labels"], prefix_lengths=b["prefix_lengths"])
        elif isinstance(model, DecLLM):
            b = causal_lm(chunk, bos_id)
            labels = b["labels"]
            if not causal_scores_prefix:
                labels = labels.clone()
                labels[:, :prefix_len] = -100  # seen as context, not scored (objectives.IGNORE_INDEX)
            out = model(b["input_ids"], labels)
        else:
            raise ValueError(f"unsupported model {type(model).__name__}")
        n = int(out.num_tokens)
        nll_sum += float(out.nll) * n
        count += n
        correct += int(out.correct)
    return nll_sum, count, correct


def evaluate_perplexity(model: LanguageModel, shards, *, bos_id: int, lengths: Sequence[int],
                        batch_size: int = 8, max_sequences: Optional[int] = 64,
                        prefix_len: Optional[int] = None, tokenizer_fingerprint: Optional[str] = None) -> dict:
    """Per-source and overall loss/perplexity/accuracy for each sequence length in ``lengths``."""
    if not lengths or any(n < 2 for n in lengths):
        raise ValueError(f"lengths must be a non-empty list of integers >= 2, got {list(lengths)}")
    by_source: dict[str, list[torch.Tensor]] = defaultdict(list)
    for source, toks in iter_documents(shards, tokenizer_fingerprint):
        by_source[source].append(toks)
    if not by_source:
        raise ValueError(f"no documents found in {shards!r}")
    was_training = model.training
    model.eval()
    results: dict = {"lengths": {}}
    try:
        for length in lengths:
            rows, tot_nll, tot_n, tot_c = {}, 0.0, 0, 0
            for source in sorted(by_source):
                tokens = _packed(by_source[source], length, max_sequences)
                if tokens is None:
                    continue
                nll, n, c = score_sequences(model, tokens, bos_id, batch_size, prefix_len)
                rows[source] = {"sequences": int(tokens.shape[0]), "tokens": n, "loss": nll / n,
                                "ppl": math.exp(min(nll / n, 30.0)), "acc": c / n}
                tot_nll, tot_n, tot_c = tot_nll + nll, tot_n + n, tot_c + c
            if tot_n:
                rows["all"] = {"sequences": sum(r["sequences"] for r in rows.values()), "tokens": tot_n,
                               "loss": tot_nll / tot_n, "ppl": math.exp(min(tot_nll / tot_n, 30.0)),
                               "acc": tot_c / tot_n}
            results["lengths"][int(length)] = rows
    finally:
        model.train(was_training)
    return results


def format_table(results: dict) -> str:
    lines = ["length | source | sequences | tokens | loss | ppl | acc", "---|---|---|---|---|---|---"]
    for length, rows in results["lengths"].items():
        for source, r in rows.items():
            lines.append(f"{length} | {source} | {r['sequences']} | {r['tokens']} | {r['loss']:.4f} | "
                         f"{r['ppl']:.2f} | {r['acc']:.4f}")
    return "\n".join(lines)


@torch.no_grad()
def score_continuations(model: LanguageModel, tokens: torch.Tensor, prefix_len: int, bos_id: int,
                        batch_size: int = 8) -> tuple[float, int, int]:
    """(summed nll, predicted tokens, correct argmax) of ``tokens[:, prefix_len:]`` given the first
    ``prefix_len`` tokens, scored the same way for every family so their numbers compare token for token.

    RedLLM: the prefix goes to the encoder and the rest is decoded (the pretraining split, at any
    ``prefix_len``). DecLLM: the whole sequence runs causally and only the positions after the prefix
    are scored (``labels`` ignored on the prefix); a DecLLM tuned with ``bidirectional_prefix`` attends
    the prefix bidirectionally, as it was tuned. Both predict exactly ``N * (L - prefix_len)`` tokens
    of ``tokens`` (N, L) from the same information (bos + the prefix).
    """
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be (sequences, length), got shape {tuple(tokens.shape)}")
    length = tokens.shape[1]
    if not 0 < prefix_len < length:
        raise ValueError(f"prefix_len must be in [1, {length - 1}] for sequences of {length} tokens, got {prefix_len}")
    return _score(model, tokens, bos_id, batch_size, prefix_len, causal_scores_prefix=False)


def documents_by_source(shards, tokenizer_fingerprint: Optional[str] = None) -> dict[str, list[torch.Tensor]]:
    """Token ids of every document in ``shards``, grouped by source (shard order within a source)."""
    by_source: dict[str, list[torch.Tensor]] = defaultdict(list)
    for source, toks in iter_documents(shards, tokenizer_fingerprint):
        by_source[source].append(toks)
    if not by_source:
        raise ValueError(f"no documents found in {shards!r}")
    return dict(by_source)


def pack_source(docs: Sequence[torch.Tensor], seq_len: int, max_sequences: Optional[int]) -> Optional[torch.Tensor]:
    """A source's documents joined and cut into at most ``max_sequences`` rows of ``seq_len`` (None if none fit)."""
    return _packed(docs, seq_len, max_sequences)
