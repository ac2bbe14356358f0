"""Shared plumbing of the pretraining and instruction datasets / DataModules."""
from __future__ import annotations

import logging
import os
import zlib
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader

from .loader import ResumableDataLoader, dist_info
from .shards import ShardSet, bundled_shards, open_shards
from .stream import DocStream, new_stats

log = logging.getLogger(__name__)

Shards = str | list[str]


class ShardIterableDataset(IterableDataset):
    """Base of the shard-backed IterableDatasets; ``iter()`` gives a resumable per-worker iterator.

    Args:
        shards: shard patterns (see :func:`~lightning_redllm.data.shards.expand_shards`) or a ShardSet.
        seed: seeds the per-epoch shard order, the shuffle buffer and the mixture draws.
        shuffle: permute the shard order each epoch (else the expanded order).
        shuffle_buffer: documents held by the shuffle buffer (0 or 1: no shuffling).
        max_epochs: stop after this many passes (None: infinite stream).
        mixture: source -> weight; each source loops on its own (needs ``max_epochs=None``).
        split: how readers share shards: "auto", "shard" or "document" (see ``stream.py``).
        on_bad_shard: "raise" or "skip" (log a warning, count it in ``stats['bad_shards']``).
        tokenizer_fingerprint: expected tokenizer fingerprint of the shard manifests.
        rank, world_size: this process's place (default: torch.distributed, else 0 of 1).
        limit_batches, batch_size: cap the output at ``limit_batches`` batches of ``batch_size``
            per rank, split over the dataloader workers the way the DataLoader interleaves them.
        vocab_size: the model's vocabulary size; a token id at or past it (or past the manifest's
            ``vocab_size``) raises :class:`BadShardError` naming the shard and sample.
    """

    kind = ""  # "pretrain" | "instruct"
    exts: tuple[str, ...] = ()
    #: each reader warns about a damaged shard (once); a ResumableDataLoader turns this off and warns
    #: once per rank itself, so workers meeting the same shard do not repeat it
    warn_bad_shards = True

    def __init__(
        self,
        shards: Shards | ShardSet,
        *,
        seed: int = 0,
        shuffle: bool = True,
        shuffle_buffer: int = 0,
        max_epochs: int | None = None,
        mixture: dict[str, float] | None = None,
        split: str = "auto",
        on_bad_shard: str = "raise",
        tokenizer_fingerprint: str | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        limit_batches: int | None = None,
        batch_size: int = 1,
        vocab_size: int | None = None,
    ):
        super().__init__()
        self.shards = shards if isinstance(shards, ShardSet) else open_shards(
            shards, kind=self.kind, expected_fingerprint=tokenizer_fingerprint, on_bad_shard=on_bad_shard
        )
        if rank is None or world_size is None:
            rank, world_size = dist_info()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        if limit_batches is not None and limit_batches < 0:
            raise ValueError(f"limit_batches must be >= 0 or None, got {limit_batches}")
        self.seed, self.shuffle, self.shuffle_buffer = seed, shuffle, shuffle_buffer
        self.max_epochs, self.mixture, self.split, self.on_bad_shard = max_epochs, mixture, split, on_bad_shard
        self.rank, self.world_size = rank, world_size
        self.limit_batches, self.batch_size = limit_batches, batch_size
        self.vocab_size = vocab_size

    def config(self) -> dict[str, Any]:
        """What must not change between a checkpoint and its resume."""
        names = "\n".join(os.path.basename(u) for u in self.shards.urls).encode()
        return {
            "kind": self.kind, "shards": len(self.shards.urls), "shard_names_crc": zlib.crc32(names),
            "seed": self.seed, "shuffle": self.shuffle, "shuffle_buffer": self.shuffle_buffer,
            "mixture": dict(sorted((self.mixture or {}).items())), "split": self.split,
        }

    def make_stream(self, worker: int, num_workers: int, stats: dict[str, int]) -> DocStream:
        return DocStream(
            self.shards, self.exts, reader_id=self.rank * num_workers + worker, num_workers=num_workers,
            world_size=self.world_size, seed=self.seed, shuffle=self.shuffle, shuffle_buffer=self.shuffle_buffer,
            max_epochs=self.max_epochs, mixture=self.mixture, split=self.split, on_bad_shard=self.on_bad_shard,
            stats=stats, vocab_size=self.vocab_size, warn_bad_shards=self.warn_bad_shards,
        )

    def validate(self, num_workers: int) -> None:
        """Raise ValueError now (in the main process) for settings the workers would fail on."""
        self.make_stream(0, max(1, num_workers), new_stats())

    def iterator(self, worker: int = 0, num_workers: int = 1) -> ShardIterator:
        """Abstract: the per-worker iterator (PretrainDataset / InstructDataset implement it)."""
        raise NotImplementedError(f"{type(self).__name__}.iterator")

    def __iter__(self) -> ShardIterator:
        info = get_worker_info()
        return self.iterator(info.id, info.num_workers) if info is not None else self.iterator(0, 1)


class ShardIterator:
    """Per-worker iterator: wraps a DocStream, counts, and saves/restores its exact position."""

    extra_stats: tuple[str, ...] = ()

    def __init__(self, ds: ShardIterableDataset, worker: int, num_workers: int):
        self.ds = ds
        self.config = ds.config()  # computed once: state_dict() runs after every batch
        self.stats = new_stats() | {k: 0 for k in self.extra_stats}
        self.stream = ds.make_stream(worker, num_workers, self.stats)
        self.limit: int | None = None
        if ds.limit_batches is not None:
            # the DataLoader takes batch b from worker b % num_workers
            n = ds.limit_batches // num_workers + (1 if worker < ds.limit_batches % num_workers else 0)
            self.limit = n * ds.batch_size
        self.emitted = 0

    def __iter__(self) -> ShardIterator:
        return self

    def __next__(self) -> dict:
        if self.limit is not None and self.emitted >= self.limit:
            raise StopIteration
        item = self.next_item()
        self.emitted += 1
        return item

    def next_item(self) -> dict:
        """Abstract: the next sample (packed sequence or instruct example)."""
        raise NotImplementedError(f"{type(self).__name__}.next_item")

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config, "stream": self.stream.state_dict(), "emitted": self.emitted,
            "stats": dict(self.stats), "bad_shards": self.stream.bad_shard_list(), **self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        config = self.config
        if state["config"] != config:
            diff = {k: (state["config"].get(k), v) for k, v in config.items() if state["config"].get(k) != v}
            raise ValueError(f"the data resume state was saved with another data configuration: {diff} (saved, now)")
        self.stream.load_state_dict(state["stream"])
        self.emitted = int(state["emitted"])
        self.stats.clear()
        self.stats.update(state["stats"])
        self.load_extra_state(state)


def lightning_consumed(dm: L.LightningDataModule):
    """``consumed_fn`` for ResumableDataLoader: Lightning's count of train batches taken (monotone)."""

    def consumed() -> int | None:
        trainer = getattr(dm, "trainer", None)
        try:
            return int(trainer.fit_loop.epoch_loop.batch_progress.total.ready)  # type: ignore[union-attr]
        except AttributeError:
            return None

    return consumed


class ShardDataModule(L.LightningDataModule):
    """Common DataModule logic: shard resolution, train/val datasets and loaders, stats."""

    kind = ""

    def __init__(self, *, train_shards, val_shards, batch_size, num_workers, seed, shuffle_buffer,
                 tokenizer_fingerprint, on_bad_shard, val_batches, split, bos_id, eos_id, pad_id):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.train_shards = train_shards if train_shards is not None else bundled_shards(self.kind, "train")
        if val_shards is None and train_shards is None:
            bundled_val = bundled_shards(self.kind, "val")
            val_shards = bundled_val if os.path.isdir(bundled_val) else None
        self.val_shards = val_shards
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.shuffle_buffer, self.tokenizer_fingerprint = shuffle_buffer, tokenizer_fingerprint
        self.on_bad_shard, self.val_batches, self.split = on_bad_shard, val_batches, split
        self._ids = {"bos_id": bos_id, "eos_id": eos_id, "pad_id": pad_id}
        self._train_set: ShardSet | None = None
        self._val_set: ShardSet | None = None
        self._train_loader: ResumableDataLoader | None = None
        self._limit_val_batches: int | float | None = None  # the trainer's, while setup() has it at 0

    # -- shards / tokenizer --------------------------------------------------------------------
    @property
    def train_set(self) -> ShardSet:
        if self._train_set is None:
            if self.train_shards == bundled_shards(self.kind, "train") and not os.path.isdir(self.train_shards):
                raise ValueError(
                    f"the bundled {self.kind} shards are missing ({self.train_shards}); build them with "
                    "`python -m data_pipelines.build_bundled` or pass --data.train_shards"
                )
            self._train_set = open_shards(self.train_shards, kind=self.kind,
                                          expected_fingerprint=self.tokenizer_fingerprint,
                                          on_bad_shard=self.on_bad_shard)
        return self._train_set

    @property
    def val_set(self) -> ShardSet | None:
        if self._val_set is None and self.val_shards:
            fp = self.tokenizer_fingerprint or (self.train_set.manifest.fingerprint if self.train_set.manifest else None)
            self._val_set = open_shards(self.val_shards, kind=self.kind, expected_fingerprint=fp,
                                        on_bad_shard=self.on_bad_shard)
        return self._val_set

    @property
    def tokenizer_info(self) -> dict[str, Any]:
        """The train manifest's tokenizer entry (fingerprint, vocab_size, special ids) with id overrides."""
        info = self.train_set.tokenizer
        info.update({k: v for k, v in self._ids.items() if v is not None})
        return info

    def token_id(self, name: str) -> int:
        value = self.tokenizer_info.get(name)
        if value is None:
            raise ValueError(f"{name} is unknown: the shards have no manifest; pass --data.{name}")
        return int(value)

    @property
    def bos_id(self) -> int:
        return self.token_id("bos_id")

    @property
    def eos_id(self) -> int:
        return self.token_id("eos_id")

    @property
    def pad_id(self) -> int:
        return self.token_id("pad_id")

    @property
    def vocab_size(self) -> int | None:
        return self.tokenizer_info.get("vocab_size")

    # -- Lightning hooks -----------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.val_shards or self.trainer is None:
            return
        if stage == "fit":
            # No validation shards: switch the val loop off the way Lightning expects. An empty list
            # from val_dataloader() is taken by Lightning as one zero-length loader, and every fit
            # then warned "Total length of `list` across ranks is zero".
            self._limit_val_batches = self.trainer.limit_val_batches
            self.trainer.limit_val_batches = 0
        elif stage in ("validate", "test", "predict"):
            raise ValueError(
                f"`{stage}` reads the validation shards, but there are none: --data.val_shards is not set "
                f"(it defaults to the bundled ones only when train_shards is not set either; "
                f"train_shards={self.train_shards!r})"
            )

    def teardown(self, stage: str) -> None:
        if stage == "fit" and self._limit_val_batches is not None and self.trainer is not None:
            self.trainer.limit_val_batches = self._limit_val_batches  # a later validate() may have val data
        self._limit_val_batches = None

    # -- datasets / loaders --------------------------------------------------------------------
    def train_dataset(self) -> ShardIterableDataset:
        """Abstract: PretrainDataModule / InstructDataModule build their dataset here."""
        raise NotImplementedError(f"{type(self).__name__}.train_dataset")

    def val_dataset(self) -> ShardIterableDataset | None:
        """Abstract: the finite validation dataset, or None."""
        raise NotImplementedError(f"{type(self).__name__}.val_dataset")

    def collate_fn(self):
        return None

    def train_dataloader(self) -> ResumableDataLoader:
        loader = ResumableDataLoader(
            self.train_dataset(), batch_size=self.batch_size, num_workers=self.num_workers,
            collate_fn=self.collate_fn(), consumed_fn=lightning_consumed(self),
        )
        if self._train_loader is not None and self._train_loader.num_workers == loader.num_workers:
            # a rebuilt loader (reload_dataloaders_every_n_epochs, a second fit) continues the stream;
            # a checkpoint restore afterwards overrides this
            previous = self._train_loader.local_state_dict()
            if previous:
                StatefulDataLoader.load_state_dict(loader, previous)
        self._train_loader = loader
        return loader

    def val_dataloader(self) -> DataLoader | list:
        ds = self.val_dataset()
        if ds is None:
            return []
        return DataLoader(ds, batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=self.collate_fn())

    def test_dataloader(self) -> DataLoader | list:
        """``test`` scores the held-out (validation) shards: one finite, unshuffled pass."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader | list:
        """``predict`` scores the held-out (validation) shards, per example."""
        return self.val_dataloader()

    def stats(self) -> dict[str, int]:
        """Training counters of this rank (tokens, documents, bad shards, truncations), as consumed.

        ``bad_shards`` counts shards given up while streaming plus, on rank 0 only (the logger sums
        over ranks), the shards left out at start (missing, other tokenizer) by on_bad_shard="skip".
        """
        stats = self._train_loader.stats() if self._train_loader is not None else {}
        if self._train_set is not None and self._train_set.skipped and dist_info()[0] == 0:
            stats["bad_shards"] = stats.get("bad_shards", 0) + len(self._train_set.skipped)
        return stats

    def _common_ds_kwargs(self, *, train: bool) -> dict[str, Any]:
        rank, world = dist_info()
        return dict(
            seed=self.seed, on_bad_shard=self.on_bad_shard, rank=rank, world_size=world,
            shuffle=train, shuffle_buffer=self.shuffle_buffer if train else 0,
            max_epochs=None if train else 1, split=self.split if train else "auto",
            limit_batches=None if train else self.val_batches, batch_size=self.batch_size,
            vocab_size=self._model_vocab_size(),
        )

    def _model_vocab_size(self) -> int | None:
        """The embedding size of the module being trained, if there is one (``config.vocab_size``)."""
        module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        value = getattr(getattr(module, "config", None), "vocab_size", None)
        return value if isinstance(value, int) else None



class DataStatsLogger(L.Callback):
    """Logs the train data counters (``data/tokens``, ``data/documents``, ``data/bad_shards``, ...)
    of a :class:`ShardDataModule` every ``every_n_steps`` optimizer steps (summed over ranks), and
    at the end of training names the shards given up in this run (damaged ones, found while
    streaming, and the ones left out at start by ``on_bad_shard="skip"``).

    ``data/bad_shards`` counts distinct shards over all ranks and workers (a damaged shard is met
    again on every pass over the data), plus those left out at start."""

    def __init__(self, every_n_steps: int = 50):
        super().__init__()
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        dm = trainer.datamodule
        if not isinstance(dm, ShardDataModule) or trainer.global_step % self.every_n_steps:
            return
        stats = dm.stats()
        stats.pop("bad_shards", None)
        if dm._train_loader is not None:  # distinct over ranks: one all-gather of a per-shard flag, not a sum
            bad = len(_global_bad_shards(trainer, pl_module, dm)) + len(dm.train_set.skipped)
            pl_module.log("data/bad_shards", float(bad), on_step=True, on_epoch=False, sync_dist=False)
        stats = {f"data/{k}": float(v) for k, v in sorted(stats.items())}
        if stats:
            pl_module.log_dict(stats, on_step=True, on_epoch=False, reduce_fx="sum", sync_dist=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        if not isinstance(dm, ShardDataModule) or dm._train_loader is None:
            return
        damaged = _global_bad_shards(trainer, pl_module, dm)
        skipped = [url for url, _ in dm.train_set.skipped]
        if trainer.is_global_zero and (damaged or skipped):
            parts = []
            if damaged:
                parts.append(f"{len(damaged)} damaged ({_first(damaged)})")
            if skipped:
                parts.append(f"{len(skipped)} left out at start ({_first(skipped)})")
            log.warning("data: %d shard(s) given up in this run (on_bad_shard='skip'): %s",
                        len(damaged) + len(skipped), "; ".join(parts))


def _first(urls: list[str], n: int = 3) -> str:
    return ", ".join(urls[:n]) + (f", ... (+{len(urls) - n})" if len(urls) > n else "")


def _global_bad_shards(trainer: L.Trainer, pl_module: L.LightningModule, dm: ShardDataModule) -> list[str]:
    """The damaged train shards met so far by any worker of any rank (collective when world > 1)."""
    loader = dm._train_loader
    local = (loader.bad_shards() if loader is not None else None) or {}
    urls = dm.train_set.urls
    if trainer.world_size > 1:
        flags = torch.zeros(len(urls), dtype=torch.int32, device=pl_module.device)
        if local:
            flags[list(local)] = 1
        ids = pl_module.all_gather(flags).reshape(-1, len(urls)).amax(0).nonzero().flatten().tolist()
    else:
        ids = sorted(local)
    return [urls[i] for i in ids]
