"""Instruction-tuning data: FLAN-style (inputs, targets) pairs, truncated, padded per batch, no packing."""
from __future__ import annotations

from typing import Any, Literal, TypedDict

import numpy as np
import torch

from .base import ShardDataModule, ShardIterableDataset, ShardIterator, Shards


class InstructSample(TypedDict):
    inputs: torch.Tensor  # (Li,) int64, truncated to max_input_len
    targets: torch.Tensor  # (Lt,) int64, truncated to max_target_len - 1, then eos appended


class InstructBatch(TypedDict):
    """An instruction batch; apply ``objectives.instruct_encoder_decoder`` / ``instruct_decoder_only``."""

    inputs: torch.Tensor  # (B, Li) int64, right-padded with pad_id; Li a multiple of pad_to_multiple
    input_lengths: torch.Tensor  # (B,) int64
    targets: torch.Tensor  # (B, Lt) int64, eos included, right-padded with pad_id; Lt a multiple too
    target_lengths: torch.Tensor  # (B,) int64, counting the eos


class InstructDataset(ShardIterableDataset):
    """Truncated instruction examples from ``*.inputs.npy`` / ``*.targets.npy`` shards.

    Args:
        eos_id: appended to every target (counts toward ``max_target_len``).
        max_input_len: inputs longer than this are cut (counted in ``stats['inputs_truncated']``).
        max_target_len: targets incl. eos longer than this are cut (``stats['targets_truncated']``).
        **kwargs: see :class:`~lightning_redllm.data.base.ShardIterableDataset`.
    """

    kind = "instruct"
    exts = ("inputs.npy", "targets.npy")

    def __init__(self, shards, *, eos_id: int, max_input_len: int = 2048, max_target_len: int = 512, **kwargs: Any):
        if max_input_len < 1 or max_target_len < 2:
            raise ValueError(f"need max_input_len >= 1 and max_target_len >= 2, got {max_input_len}, {max_target_len}")
        super().__init__(shards, **kwargs)
        self.eos_id, self.max_input_len, self.max_target_len = eos_id, max_input_len, max_target_len

    def config(self) -> dict[str, Any]:
        return super().config() | {"max_input_len": self.max_input_len, "max_target_len": self.max_target_len}

    def iterator(self, worker: int = 0, num_workers: int = 1) -> InstructIterator:
        return InstructIterator(self, worker, num_workers)


class InstructIterator(ShardIterator):
    extra_stats = ("examples", "inputs_truncated", "targets_truncated")

    def next_item(self) -> InstructSample:
        ds: InstructDataset = self.ds  # type: ignore[assignment]
        doc = self.stream.next()
        if doc is None:
            raise StopIteration
        inputs, targets = doc.arrays
        if len(inputs) > ds.max_input_len:
            inputs = inputs[: ds.max_input_len]
            self.stats["inputs_truncated"] += 1
        if len(targets) > ds.max_target_len - 1:
            targets = targets[: ds.max_target_len - 1]
            self.stats["targets_truncated"] += 1
        tgt = np.empty(len(targets) + 1, dtype=np.int64)  # (Lt,)
        tgt[:-1] = targets
        tgt[-1] = ds.eos_id
        self.stats["examples"] += 1
        self.stats["tokens"] += len(inputs) + len(tgt)
        return {"inputs": torch.from_numpy(inputs.astype(np.int64)), "targets": torch.from_numpy(tgt)}


def _round_up(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


class InstructCollator:
    """Right-pads inputs and targets with ``pad_id`` to a multiple of ``pad_to_multiple`` (picklable)."""

    def __init__(self, pad_id: int, pad_to_multiple: int = 64):
        if pad_to_multiple < 1:
            raise ValueError(f"pad_to_multiple must be >= 1, got {pad_to_multiple}")
        self.pad_id, self.pad_to_multiple = pad_id, pad_to_multiple

    def _pad(self, seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)  # (B,)
        out = torch.full((len(seqs), _round_up(int(lengths.max()), self.pad_to_multiple)), self.pad_id, dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = s
        return out, lengths

    def __call__(self, items: list[InstructSample]) -> InstructBatch:
        inputs, input_lengths = self._pad([x["inputs"] for x in items])  # (B, Li), (B,)
        targets, target_lengths = self._pad([x["targets"] for x in items])  # (B, Lt), (B,)
        return {"inputs": inputs, "input_lengths": input_lengths, "targets": targets, "target_lengths": target_lengths}


class InstructDataModule(ShardDataModule):
    """Instruction-tuning batches (FLAN-style inputs/targets) from pretokenized shards, resumable exactly.

    Batches are :class:`InstructBatch`: ``inputs`` (B, Li) and ``targets`` (B, Lt) right-padded with
    ``pad_id`` to a multiple of ``pad_to_multiple``, plus ``input_lengths`` / ``target_lengths`` (B,).
    Targets end with eos. No packing. The train stream is infinite; validation is one finite pass.

    Args:
        train_shards: training shard patterns: a path, directory, glob, brace pattern, ``pipe:`` /
            ``http(s)://`` URL, or a list of these. None: the bundled FLAN-format set in
            ``lightning_redllm/assets/shards/instruct/train``.
        val_shards: validation shard patterns. None: the bundled validation shards when
            ``train_shards`` is also left at None, otherwise no validation (``fit`` skips it;
            ``validate`` / ``test`` / ``predict`` raise ValueError).
        max_input_len: inputs are truncated to this many tokens (counted in ``stats()``).
        max_target_len: targets are truncated to this many tokens including the appended eos.
        pad_to_multiple: pad the batch's input and target lengths up to a multiple of this.
        batch_size: examples per batch on each rank.
        num_workers: dataloader worker processes per rank (0: load in the main process).
        seed: seed for the per-epoch shard order and the shuffle buffer.
        shuffle_buffer: examples held in the shuffle buffer of each reader (0: examples in shard
            order; the shard order is still permuted every epoch).
        tokenizer_fingerprint: expected tokenizer fingerprint (``sha256:...``); a shard manifest with
            another fingerprint raises ValueError. None: no check.
        on_bad_shard: "raise" or "skip" (log a warning, count in ``stats()['bad_shards']``, continue).
        val_batches: at most this many validation batches per rank (None: the whole validation set;
            ranks may then run slightly different numbers of batches).
        split: how readers share the shards: "shard", "document" or "auto" (see PretrainDataModule).
        bos_id: override the manifest's bos id (needed when the shards have no manifest).
        eos_id: override the manifest's eos id (appended to every target).
        pad_id: override the manifest's pad id (used for padding).
    """

    kind = "instruct"

    def __init__(
        self,
        train_shards: Shards | None = None,
        val_shards: Shards | None = None,
        max_input_len: int = 2048,
        max_target_len: int = 512,
        pad_to_multiple: int = 64,
        batch_size: int = 8,
        num_workers: int = 2,
        seed: int = 1234,
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
        if max_input_len < 1 or max_target_len < 2:
            raise ValueError(f"need max_input_len >= 1 and max_target_len >= 2, got {max_input_len}, {max_target_len}")
        if pad_to_multiple < 1:
            raise ValueError(f"pad_to_multiple must be >= 1, got {pad_to_multiple}")
        self.max_input_len, self.max_target_len, self.pad_to_multiple = max_input_len, max_target_len, pad_to_multiple
        self.save_hyperparameters()

    def collate_fn(self) -> InstructCollator:
        return InstructCollator(self.pad_id, self.pad_to_multiple)

    def _ds(self, shards, train: bool) -> InstructDataset:
        return InstructDataset(
            shards, eos_id=self.eos_id, max_input_len=self.max_input_len, max_target_len=self.max_target_len,
            **self._common_ds_kwargs(train=train),
        )

    def train_dataset(self) -> InstructDataset:
        return self._ds(self.train_set, True)

    def val_dataset(self) -> InstructDataset | None:
        return None if self.val_set is None else self._ds(self.val_set, False)
