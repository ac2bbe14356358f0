"""Sampling and batching for decoding: the options, next-token sampling, a prompt batch padded for
each family, the finished-row bookkeeping and the context-length warning."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Optional, Sequence, TextIO

import torch

from ..config import ModelConfig
from ..models import DecLLM, RedLLM


@dataclass
class SamplingOptions:
    """How to pick each next token.

    Args:
        max_new_tokens: upper bound on generated tokens per prompt.
        temperature: 0 = greedy; > 0 scales the logits before sampling.
        top_k: keep only the k most likely tokens (None = all).
        top_p: nucleus sampling, keep the smallest set with cumulative probability >= top_p, in (0, 1].
        seed: seed of the sampling generator (None = torch's global RNG).
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if self.temperature < 0 or self.temperature != self.temperature:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None, got {self.top_k!r}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def sample_next(logits: torch.Tensor, opts: SamplingOptions, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """logits (B, V) -> next token ids (B,)."""
    logits = logits.float()
    if opts.temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits / opts.temperature
    if opts.top_k is not None and opts.top_k < logits.shape[-1]:
        kth = torch.topk(logits, opts.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if opts.top_p is not None and opts.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the mass before it already reaches top_p (the top token always stays)
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= opts.top_p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _check_prompts(prompts: Sequence[Sequence[int]]) -> None:
    if len(prompts) == 0:
        raise ValueError("generate needs at least one prompt")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty")


class ContextLengthWarning(UserWarning):
    """Generation runs past the context length the model was trained for."""


def context_overflow(config: ModelConfig, prompt_lengths: Sequence[int], max_new_tokens: int, *,
                     add_bos: bool = True) -> Optional[str]:
    """One-line explanation when the longest prompt + ``max_new_tokens`` exceeds ``config.max_seq_len``
    (the trained context), else None. A DecLLM prompt counts its prepended bos."""
    longest = max(prompt_lengths)
    bos = 1 if add_bos and config.family == "decllm" else 0
    total = longest + bos + max_new_tokens
    if total <= config.max_seq_len:
        return None
    return (f"the longest prompt ({longest} tokens{' + bos' if bos else ''}) + max_new_tokens {max_new_tokens} "
            f"= {total} tokens exceeds the model's trained context of {config.max_seq_len} tokens "
            "(config max_seq_len); RoPE extrapolates past it, but expect the output to degrade")


class ProgressPrinter:
    """A ``progress`` callback for :func:`generate` that prints ``<prefix>: 256/1000 new tokens
    (41.3 tok/s)`` to ``file`` (stderr) every ``every`` tokens, and at least every ``seconds``
    seconds, so a long generation shows it is working. Nothing is printed for short ones."""

    def __init__(self, total: int, prefix: str = "generate", every: int = 256, seconds: float = 10.0,
                 file: Optional[TextIO] = None):
        if every < 1:
            raise ValueError(f"ProgressPrinter every must be >= 1 token, got {every}")
        self.total, self.prefix, self.every, self.seconds = total, prefix, every, seconds
        self.file = file
        self.start = self.last = time.monotonic()

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if done % self.every and now - self.last < self.seconds:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        print(f"{self.prefix}: {done}/{self.total} new tokens ({rate:.1f} tok/s)", file=self.file or sys.stderr,
              flush=True)


def _finish(tokens: torch.Tensor, eos_id: Optional[int]) -> list[list[int]]:
    out = []
    for row in tokens.tolist():
        if eos_id is not None and eos_id in row:
            row = row[: row.index(eos_id)]
        out.append(row)
    return out


def _step_done(next_tok: torch.Tensor, done: torch.Tensor, eos_id: Optional[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    next_tok = torch.where(done, torch.full_like(next_tok, pad_id), next_tok)
    if eos_id is not None:
        done = done | (next_tok == eos_id)
    return next_tok, done


def _left_padded(model: DecLLM, prompts, bos_id, pad_id, add_bos):
    """(ids, mask, prefix_lengths or None) of a DecLLM prompt batch, left-padded, on the model's device."""
    device = model.embed.weight.device
    rows = [([bos_id] if add_bos else []) + list(p) for p in prompts]
    b, p_len = len(rows), max(len(r) for r in rows)
    ids = torch.full((b, p_len), pad_id, dtype=torch.long)
    mask = torch.zeros((b, p_len), dtype=torch.bool)
    for i, r in enumerate(rows):  # left padding, built on the host: one transfer
        ids[i, p_len - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, p_len - len(r):] = True
    prefix = None
    if model.config.bidirectional_prefix:  # counted from each row's first real token
        prefix = torch.tensor([len(r) for r in rows], dtype=torch.long, device=device)
    return ids.to(device), mask.to(device), prefix


def _right_padded(model: RedLLM, prompts, pad_id):
    """(encoder ids (B, S), lengths (B,)) of a RedLLM prompt batch, right-padded: built on the host,
    moved to the model's device in one transfer each."""
    device = model.embed.weight.device
    ids = torch.full((len(prompts), max(len(p) for p in prompts)), pad_id, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = torch.tensor(list(p), dtype=torch.long)
    return ids.to(device), torch.tensor([len(p) for p in prompts], dtype=torch.long, device=device)


