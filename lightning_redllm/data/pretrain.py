"""Pretraining data: documents (eos already appended) packed into fixed ``seq_len`` sequences.

Documents are concatenated in stream order and cut into non-overlapping sequences of exactly
``seq_len`` tokens; a document may span sequences (the remainder carries over). Nothing is padded
and no token is dropped in the infinite training stream; a finite (validation) pass drops the last
incomplete sequence (counted in ``stats['dropped_tokens']``).
"""
from __future__ import annotations

from typing import Any, Literal, TypedDict

import numpy as np
import torch

from .base import ShardDataModule, ShardIterableDataset, ShardIterator, Shards
from .stream import Doc


class PretrainSample(TypedDict):
    tokens: torch.Tensor  # (seq_len,) int64


class PretrainBatch(TypedDict):
    """A pretraining batch; apply ``objectives.causal_lm`` / ``objectives.prefix_lm`` on the device."""

    tokens: torch.Tensor  # (B, seq_len) int64: packed documents, each ending in eos


class PretrainDataset(ShardIterableDataset):
    """Packed pretraining sequences from ``*.tokens.npy`` shards (see :class:`ShardIterableDataset`).

    Args:
        seq_len: tokens per sequence.
        **kwargs: see :class:`~lightning_redllm.data.base.ShardIterableDataset`.
    """

    kind = "pretrain"
    exts = ("tokens.npy",)

    def __init__(self, shards, *, seq_len: int = 2048, **kwargs: Any):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        super().__init__(shards, **kwargs)
        self.seq_len = seq_len

    def config(self) -> dict[str, Any]:
        return super().config() | {"seq_len": self.seq_len}

    def iterator(self, worker: int = 0, num_workers: int = 1) -> PackedIterator:
        return PackedIterator(self, worker, num_workers)


class PackedIterator(ShardIterator):
    extra_stats = ("sequences", "dropped_tokens")

    def __init__(self, ds: PretrainDataset, worker: int, num_workers: int):
        super().__init__(ds, worker, num_workers)
        self.seq_len = ds.seq_len
        self.rem: tuple[Doc, int] | None = None  # document being packed, offset of its first unused token
        self.dropped = np.zeros(0, dtype=np.int64)  # tokens of the incomplete last sequence of a finite pass

    def next_item(self) -> PretrainSample:
        n = self.seq_len
        out = np.empty(n, dtype=np.int64)  # (seq_len,)
        pos = 0
        while pos < n:
            if self.rem is None:
                doc = self.stream.next()
                if doc is None:
                    self.dropped = out[:pos].copy()
                    self.stats["dropped_tokens"] += pos
                    raise StopIteration
                self.rem = (doc, 0)
            doc, off = self.rem
            tokens = doc.arrays[0]
            k = min(n - pos, len(tokens) - off)
            out[pos : pos + k] = tokens[off : off + k]
            pos, off = pos + k, off + k
            self.rem = (doc, off) if off < len(tokens) else None
        self.stats["tokens"] += n
        self.stats["sequences"] += 1
        return {"tokens": torch.from_numpy(out)}

    def remainder(self) -> np.ndarray:
        """Tokens taken from the stream but not yet emitted (the carried document tail)."""
        if self.rem is None:
            return np.zeros(0, dtype=np.int64)
        doc, off = self.rem
        return doc.arrays[0][off:].astype(np.int64)

    def extra_state(self) -> dict[str, Any]:
        rem = [] if self.rem is None else [self.rem[0].shard, self.rem[0].index, self.rem[1]]
        return {"remainder": rem}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        rem = state["remainder"]
        self.rem = None
        if rem:
            (doc,) = self.stream.fetch([(int(rem[0]), int(rem[1]))])
            self.rem = (doc, int(rem[2]))


class PretrainDataModule(ShardDataModule):
    """Packed pretraining sequences streamed from pretokenized webdataset shards, resumable exactly.

    Batches are :class:`PretrainBatch` ``{"tokens": LongTensor(batch_size, seq_len)}``. The train
    stream is infinite (epochs counted per reader in the resume state); validation is one finite,
    unshuffled pass. The train loader's position is saved in Lightning checkpoints and restored on
    resume (every rank's position under DDP).

    Args:
        train_shards: training shard patterns: a path, directory, glob, brace pattern
            (``/data/shard-{000000..004095}.tar``), ``pipe:``/``http(s)://`` URL, or a list of these.
            None: the bundled corpus in ``lightning_redllm/assets/shards/pretrain/train``.
        val_shards: validation shard patterns, same forms. None: the bundled validation shards when
            ``train_shards`` is also left at None, otherwise no validation (``fit`` skips it;
            ``validate`` / ``test`` / ``predict`` raise ValueError).
        seq_len: tokens per packed sequence (documents are joined by their eos and cut into
            non-overlapping sequences of exactly this length).
        batch_size: sequences per batch on each rank.
        num_workers: dataloader worker processes per rank (0: load in the main process). Shards are
            split over ``world_size * num_workers`` readers.
        seed: seed for the per-epoch shard order, the shuffle buffer and the mixture draws; the same
            seed and settings give the same batches.
        mixture: source weights, e.g. ``{"common_crawl": 0.67, "c4": 0.15, "github": 0.045, ...}``
            (normalized). Sources come from the sample keys ``{source}-{index}``; each source loops
            over its shards on its own (RedPajama / LLaMA-style sampling). None: the natural order.
        shuffle_buffer: documents held in the shuffle buffer of each reader (0: documents in shard
            order; the shard order is still permuted every epoch).
        tokenizer_fingerprint: expected tokenizer fingerprint (``sha256:...``); a shard manifest with
            another fingerprint raises ValueError. None: no check.
        on_bad_shard: what to do with a corrupt, truncated or unreadable shard: "raise" or "skip"
            (log a warning, count it in ``stats()['bad_shards']`` and continue).
        val_batches: at most this many validation batches per rank (None: the whole validation set;
            ranks may then run slightly different numbers of batches).
        split: how readers share the shards: "shard" (whole shards; needs at least
            world_size*num_workers shards per source), "document" (every reader scans every shard and
            keeps every n-th document), "auto" (shard when possible, else document).
        bos_id: override the manifest's bos id (needed when the shards have no manifest).
        eos_id: override the manifest's eos id.
        pad_id: override the manifest's pad id.
    """

    kind = "pretrain"

    def __init__(
        self,
        train_shards: Shards | None = None,
        val_shards: Shards | None = None,
        seq_len: int = 2048,
        batch_size: int = 8,
        num_workers: int = 2,
        seed: int = 1234,
        mixture: dict[str, float] | None = None,
        shuffle_buffer: int = 1000,
        tokenizer_fingerprint: str | None = None,
        on_bad_shard: Literal["raise", "skip"] = "raise",
        val_batches: int | None = None,
        split: Literal["auto", "shard", "document"] = "auto",
        bos_id: int | None = None,
        eos_id: int | None = None,
        pad_id: int | None = None,
    ):
        super().__init__(
            train_shards=train_shards, val_shards=val_shards, batch_size=batch_size, num_workers=num_workers,
            seed=seed, shuffle_buffer=shuffle_buffer, tokenizer_fingerprint=tokenizer_fingerprint,
            on_bad_shard=on_bad_shard, val_batches=val_batches, split=split,
            bos_id=bos_id, eos_id=eos_id, pad_id=pad_id,
        )
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.seq_len, self.mixture = seq_len, mixture
        self.save_hyperparameters()

    def train_dataset(self) -> PretrainDataset:
        return PretrainDataset(self.train_set, seq_len=self.seq_len, mixture=self.mixture,
                               **self._common_ds_kwargs(train=True))

    def val_dataset(self) -> PretrainDataset | None:
        if self.val_set is None:
            return None
        return PretrainDataset(self.val_set, seq_len=self.seq_len, **self._common_ds_kwargs(train=False))
