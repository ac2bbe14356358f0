"""The resumable train dataloader: torchdata's StatefulDataLoader plus two fixes for Lightning.

1. **Prefetch lag.** Lightning's training loop prefetches one batch (``_PrefetchDataFetcher``) for
   iterables without ``__len__``, so when a checkpoint is written after step N the loader has
   already yielded batch N+1 and a plain ``StatefulDataLoader.state_dict()`` resumes at N+2 — one
   batch silently skipped (checked with lightning 2.6). :class:`ResumableDataLoader` keeps the
   states of its last few batches and returns the one matching the batches the consumer really
   took (``consumed_fn``; the DataModules pass Lightning's ``batch_progress.total.ready``).
   This also fixes ``trainer.save_checkpoint()`` after ``fit()`` returned (Lightning has reset the
   iterator by then, and a plain StatefulDataLoader would report the start of the stream) and
   makes a re-``iter()`` continue the infinite stream where consumption stopped instead of
   restarting it (``limit_train_batches`` epochs).
2. **DDP.** Only rank 0 writes the Lightning checkpoint, so every rank's loader state would be
   replaced by rank 0's on resume. ``state_dict()`` therefore all-gathers the per-rank states
   (``torch.distributed.all_gather_object``; Lightning builds the checkpoint dict on every rank) and
   ``load_state_dict()`` picks this rank's entry. Resuming with another world size or
   ``num_workers`` raises ``ValueError`` (positions are per reader and cannot be remapped exactly).
"""
from __future__ import annotations

import logging
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torchdata.stateful_dataloader import StatefulDataLoader

log = logging.getLogger(__name__)

STATE_FORMAT = "lightning_redllm.loader/1"


def dist_info() -> tuple[int, int]:
    """(rank, world_size) from torch.distributed when initialized, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def worker_states(loader_state: dict[str, Any]) -> list[dict[str, Any]]:
    """The dataset-iterator states inside one rank's StatefulDataLoader state (one per worker)."""
    if not loader_state:
        return []
    if "_snapshot" in loader_state:  # multi-process
        snaps = loader_state["_snapshot"]["_worker_snapshots"]
        states = [snaps[k].get("fetcher_state", {}) or {} for k in sorted(snaps, key=lambda k: int(k.split("_")[-1]))]
    else:
        states = [loader_state.get("fetcher_state") or {}]
    return [s["dataset_iter_state"] for s in states if s.get("dataset_iter_state")]


class ResumableDataLoader(StatefulDataLoader):
    """``StatefulDataLoader`` whose ``state_dict()`` describes the batches actually consumed.

    Args:
        dataset: the IterableDataset (its iterator implements ``state_dict``/``load_state_dict``).
        consumed_fn: returns a monotone count of batches the consumer took from this loader (e.g.
            Lightning's ``fit_loop.epoch_loop.batch_progress.total.ready``) or None when unknown;
            without it every yielded batch counts as consumed.
        history: how many past batch states to keep (>= prefetched batches + 1).
        **kwargs: passed to ``StatefulDataLoader`` (batch_size, num_workers, collate_fn, ...).
    """

    def __init__(self, dataset, *, consumed_fn: Callable[[], int | None] | None = None, history: int = 8, **kwargs):
        kwargs.setdefault("snapshot_every_n_steps", 1)
        if kwargs["snapshot_every_n_steps"] != 1:
            raise ValueError("ResumableDataLoader needs snapshot_every_n_steps=1 for exact resume")
        if hasattr(dataset, "validate"):  # fail before forking workers (a failing worker takes ~5 s to reap)
            dataset.validate(kwargs.get("num_workers", 0))
        if hasattr(dataset, "warn_bad_shards"):
            dataset.warn_bad_shards = False  # warned here, once per rank (_warn_new_bad_shards)
        self._warned_bad: set[int] = set()
        with warnings.catch_warnings():  # torchdata 0.11 calls the deprecated torch.set_vital
            warnings.filterwarnings("ignore", message=".*set_vital.*")
            super().__init__(dataset, **kwargs)
        self.consumed_fn = consumed_fn
        self._history: deque[dict[str, Any]] = deque(maxlen=max(2, history))
        self._yielded = 0
        self._base: int | None = None
        self._live = False  # an iteration is in progress (not exhausted)

    # -- iteration -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        if self.next_iter_state is None and self._history and self._live:
            # the previous pass over this (infinite) stream was abandoned: continue where the
            # consumer stopped instead of restarting from the beginning
            StatefulDataLoader.load_state_dict(self, self._consumed_state())
        it = super().__iter__()
        self._history.clear()
        self._history.append(StatefulDataLoader.state_dict(self))
        self._yielded = 0
        self._base = self._consumed_now()
        self._live = True
        return self._generate(it)

    def _generate(self, it: Iterator[Any]) -> Iterator[Any]:
        for batch in it:
            self._yielded += 1
            state = StatefulDataLoader.state_dict(self)
            self._history.append(state)
            self._warn_new_bad_shards(state)
            yield batch
        self._live = False

    def _consumed_now(self) -> int | None:
        return None if self.consumed_fn is None else self.consumed_fn()

    def _consumed_state(self) -> dict[str, Any]:
        now = self._consumed_now()
        consumed = self._yielded if now is None or self._base is None else now - self._base
        lag = self._yielded - consumed
        if not 0 <= lag < len(self._history):
            log.warning(
                "data loader: %d batches yielded but %d consumed; saving the state after %d batches",
                self._yielded, consumed, self._yielded,
            )
            lag = 0
        return self._history[-1 - lag]

    # -- state ---------------------------------------------------------------------------------
    def local_state_dict(self) -> dict[str, Any]:
        """This rank's StatefulDataLoader state as of the consumed batches ({} before any iteration)."""
        if self.next_iter_state is not None:
            return self.next_iter_state
        if not self._history:
            return {}
        return self._consumed_state()

    def state_dict(self) -> dict[str, Any]:
        local = self.local_state_dict()
        rank, world = dist_info()
        if world > 1:
            states: list[Any] = [None] * world
            torch.distributed.all_gather_object(states, local)
        else:
            states = [local]
        return {"format": STATE_FORMAT, "world_size": world, "num_workers": self.num_workers, "ranks": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._history.clear()
        self._live = False
        if not state_dict:
            return super().load_state_dict({})
        if state_dict.get("format") != STATE_FORMAT:
            raise ValueError(f"not a {STATE_FORMAT} data loader state (keys: {sorted(state_dict)[:6]})")
        rank, world = dist_info()
        if state_dict["world_size"] != world or state_dict["num_workers"] != self.num_workers:
            raise ValueError(
                f"the data loader state was saved with world_size={state_dict['world_size']}, "
                f"num_workers={state_dict['num_workers']} but this run has world_size={world}, "
                f"num_workers={self.num_workers}; exact resume needs the same values"
            )
        super().load_state_dict(state_dict["ranks"][rank])
        # damaged shards met before the checkpoint were warned about then; the run's end report lists them
        self._warned_bad |= set(self.bad_shards(state_dict["ranks"][rank]) or ())

    # -- counters ------------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Counters (tokens, documents, truncations) summed over this rank's workers; ``bad_shards``
        counts distinct shards (workers may each meet the same damaged shard in different epochs)."""
        total: dict[str, int] = {}
        for st in worker_states(self.local_state_dict()):
            for k, v in st.get("stats", {}).items():
                total[k] = total.get(k, 0) + int(v)
        bad = self.bad_shards()
        if bad is not None:
            total["bad_shards"] = len(bad)
        return total

    def bad_shards(self, state: dict[str, Any] | None = None) -> dict[int, str] | None:
        """Shard id (index into the dataset's shard list) -> why, for the shards this rank's workers
        found damaged so far; None when the worker states do not track them."""
        found: dict[int, str] | None = None
        for st in worker_states(self.local_state_dict() if state is None else state):
            if "bad_shards" in st:
                found = found if found is not None else {}
                found.update({int(i): str(why) for i, why in st["bad_shards"]})
        return found

    def _warn_new_bad_shards(self, state: dict[str, Any]) -> None:
        """Warn once per damaged shard on this rank (the workers are told not to, see
        ``ShardIterableDataset.warn_bad_shards``: each would repeat it when it meets the shard)."""
        from .stream import bad_shard_warning

        for i, why in sorted((self.bad_shards(state) or {}).items()):
            if i not in self._warned_bad:
                self._warned_bad.add(i)
                log.warning(bad_shard_warning(why))
