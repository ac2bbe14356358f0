"""A resumable, deterministic document stream over shards, one per (rank, dataloader worker).

A *reader* is one (rank, worker) pair: ``reader_id = rank * num_workers + worker`` out of
``n_readers = world_size * num_workers``. Each reader sees a disjoint part of the data:

* ``split="shard"``: the shard list is permuted with ``(seed, source, epoch)`` identically on every
  reader and reader ``r`` takes ``order[r::n_readers]`` — every shard is read once per epoch.
* ``split="document"``: every reader scans every shard and keeps sample ``i`` of shard ``s`` when
  ``(s + i) % n_readers == r`` (for shard sets smaller than the number of readers).
* ``split="auto"``: "shard" when there are at least ``n_readers`` shards, else "document" (with a warning).

With a ``mixture`` each source has its own reader loop (its own epochs, RedPajama style) and the
next document's source is drawn with the reader's seeded RNG. Documents then pass a shuffle buffer
(fill to ``shuffle_buffer``, emit a uniformly drawn element, refill).

Resume state (:meth:`DocStream.state_dict`) is small and replayable instead of holding tokens:
per source ``(epoch, cursor in the epoch's shard order, samples consumed in the current shard)``,
the shuffle buffer as references ``(shard id, sample index)`` which are re-read on restore, the RNG
state and counters. Only plain Python values (refs as bytes), so ``torch.load(weights_only=True)`` works.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .shards import BAD_SHARD_POLICIES, BadShardError, ShardSet, decode_npy, iter_shard, source_of

log = logging.getLogger(__name__)

SPLIT_MODES = ("auto", "shard", "document")


@dataclass
class Doc:
    """One document: where it came from (for replay) and its decoded arrays (one per field)."""

    shard: int  # index into ShardSet.urls
    index: int  # sample index inside the shard
    arrays: tuple[np.ndarray, ...]


_WARNED: set[str] = set()


def _warn_once(msg: str, *args) -> None:
    # the DataLoader checks the settings in the main process first; forked workers inherit this set
    text = msg % args
    if text not in _WARNED:
        _WARNED.add(text)
        log.warning(text)


def bad_shard_warning(why: str) -> str:
    return f"skipping the rest of a bad shard (on_bad_shard='skip'; its readable part is still used, warned once): {why}"


def new_stats() -> dict[str, int]:
    return {"documents": 0, "tokens": 0, "bad_shards": 0}


def _decode(parts: dict[str, bytes], exts: tuple[str, ...], url: str, key: str) -> tuple[np.ndarray, ...]:
    return tuple(decode_npy(parts[e], f"shard {url!r}, sample {key!r}: {e} member") for e in exts)


def _check_vocab(arrays: tuple[np.ndarray, ...], vocab_size: int, whose: str, url: str, key: str) -> None:
    # an id past the vocabulary would crash the embedding (a device-side assert on GPU) far from
    # here, with no word of the shard; it means the shard came from another tokenizer
    for a in arrays:
        if not a.size:
            continue
        bad = int(a.max())
        if bad < vocab_size and a.dtype.kind == "i":
            bad = int(a.min())  # a signed array may hold negative ids instead
        if not 0 <= bad < vocab_size:
            raise BadShardError(
                f"shard {url!r}: sample {key!r} has token id {bad}, outside the vocabulary [0, {vocab_size}) of "
                f"{whose}; was it tokenized with another tokenizer?"
            )


class _SourceLoop:
    """Loops over the shards of one source (or of all sources) for one reader; tracks its position."""

    def __init__(self, stream: DocStream, source_idx: int, name: str | None, shard_ids: list[int]):
        self.s, self.source_idx, self.name = stream, source_idx, name
        self.shard_ids = shard_ids
        n = stream.n_readers
        self.split = stream.split
        if self.split == "auto":
            self.split = "shard" if len(shard_ids) >= n else "document"
            if self.split == "document" and stream.reader_id == 0 and n > 1:
                _warn_once(
                    "%d shard(s)%s for %d readers (ranks x dataloader workers): every reader scans all "
                    "shards and keeps every %d-th document; use more shards for efficient loading",
                    len(shard_ids), f" of source {name!r}" if name else "", n, n,
                )
        elif self.split == "shard" and len(shard_ids) < n:
            raise ValueError(
                f"{len(shard_ids)} shard(s){f' of source {name!r}' if name else ''} cannot be split over "
                f"{n} readers ({stream.world_size} rank(s) x {stream.num_workers} dataloader worker(s)); "
                f"write at least {n} shards, lower num_workers, or use split='document'"
            )
        self.epoch = self.cursor = self.offset = 0
        self.done = False
        self._it = None
        self._empty_passes = 0

    # -- position ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "offset": self.offset, "done": self.done}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor, self.offset = int(state["epoch"]), int(state["cursor"]), int(state["offset"])
        self.done = bool(state["done"])
        self._it = None

    def order(self, epoch: int) -> list[int]:
        """Shard ids this reader visits in ``epoch`` (identical permutation on every reader)."""
        ids = list(self.shard_ids)
        if self.s.shuffle:
            perm = np.random.default_rng([self.s.seed, self.source_idx, epoch]).permutation(len(ids))
            ids = [ids[i] for i in perm]
        if self.split == "shard":
            return ids[self.s.reader_id :: self.s.n_readers]
        return ids

    def _wanted(self, shard: int) -> Callable[[int, str], bool] | None:
        r, n, name = self.s.reader_id, self.s.n_readers, self.name
        doc_split = self.split == "document" and n > 1
        sources = self.s.shards.sources[shard]
        filt = name is not None and not (sources is not None and len(sources) == 1 and sources[0] == name)
        if doc_split and filt:
            return lambda i, key: (shard + i) % n == r and source_of(key) == name
        if doc_split:
            return lambda i, key: (shard + i) % n == r
        if filt:
            return lambda i, key: source_of(key) == name
        return None

    # -- iteration -----------------------------------------------------------------------------
    def next(self) -> Doc | None:
        """The next document, or None once ``max_epochs`` epochs are done."""
        if self.done:
            return None
        if self._it is None:
            self._it = self._docs()
        doc = next(self._it, None)
        if doc is None:
            self.done = True
        return doc

    def _docs(self):
        s = self.s
        while s.max_epochs is None or self.epoch < s.max_epochs:
            order = self.order(self.epoch)
            full_pass = self.cursor == 0 and self.offset == 0
            produced = False
            while self.cursor < len(order):
                shard = order[self.cursor]
                url = s.shards.urls[shard]
                try:
                    for index, _key, parts in iter_shard(
                        url, s.exts, start=self.offset, wanted=self._wanted(shard),
                        expected_documents=s.shards.documents[shard],
                    ):
                        arrays = _decode(parts, s.exts, url, _key)
                        if s.vocab_size is not None:
                            _check_vocab(arrays, s.vocab_size, s.vocab_owner, url, _key)
                        self.offset = index + 1
                        produced = True
                        yield Doc(shard, index, arrays)
                except BadShardError as exn:
                    if s.on_bad_shard == "raise":
                        raise
                    # every pass re-reads the shard up to the damage: count it, and say so, once
                    if shard not in s.bad_shards:
                        s.bad_shards[shard] = str(exn)
                        s.stats["bad_shards"] += 1
                        if s.warn_bad_shards:
                            log.warning(bad_shard_warning(str(exn)))
                self.cursor += 1
                self.offset = 0
            self.epoch += 1
            self.cursor = 0
            self._empty_passes = 0 if produced else self._empty_passes + (1 if full_pass else 0)
            if self._empty_passes and s.max_epochs is None:
                raise ValueError(
                    f"reader {s.reader_id}/{s.n_readers} got no document in a full pass over "
                    f"{len(order)} shard(s){f' of source {self.name!r}' if self.name else ''} "
                    f"(first: {s.shards.urls[order[0]] if order else 'none'!r}); all unreadable or too few documents"
                )


class DocStream:
    """Deterministic, resumable stream of :class:`Doc` for one reader (rank x dataloader worker)."""

    def __init__(
        self,
        shards: ShardSet,
        exts: Sequence[str],
        *,
        reader_id: int,
        num_workers: int,
        world_size: int,
        seed: int,
        shuffle: bool,
        shuffle_buffer: int,
        max_epochs: int | None,
        mixture: dict[str, float] | None = None,
        split: str = "auto",
        on_bad_shard: str = "raise",
        stats: dict[str, int] | None = None,
        vocab_size: int | None = None,
        warn_bad_shards: bool = True,
    ):
        if on_bad_shard not in BAD_SHARD_POLICIES:
            raise ValueError(f"on_bad_shard={on_bad_shard!r}; expected one of {BAD_SHARD_POLICIES}")
        if split not in SPLIT_MODES:
            raise ValueError(f"split={split!r}; expected one of {SPLIT_MODES}")
        self.shards, self.exts = shards, tuple(exts)
        self.num_workers, self.world_size = num_workers, world_size
        self.reader_id, self.n_readers = reader_id, num_workers * world_size
        self.seed, self.shuffle, self.buffer_size = seed, shuffle, shuffle_buffer
        self.max_epochs, self.split, self.on_bad_shard = max_epochs, split, on_bad_shard
        self.stats = stats if stats is not None else new_stats()
        #: shard id -> why, for the shards this reader found damaged (each counted in ``stats['bad_shards']``
        #: and warned about once; a ResumableDataLoader warns instead, once per rank: ``warn_bad_shards``)
        self.bad_shards: dict[int, str] = {}
        self.warn_bad_shards = warn_bad_shards
        # token ids must fit the manifest's tokenizer and the model (``vocab_size``): shards without
        # a manifest (URLs, user shards) are only checked against the model
        bounds = [(int(v), who) for v, who in ((shards.tokenizer.get("vocab_size"), "the manifest's tokenizer"),
                                               (vocab_size, "the model")) if v]
        self.vocab_size, self.vocab_owner = min(bounds, key=lambda b: b[0]) if bounds else (None, "")
        self.rng = np.random.default_rng([seed, 7919, reader_id])
        self.buffer: list[Doc] = []
        self._refs = np.zeros((max(shuffle_buffer, 1), 2), dtype=np.int64)  # (shard, index) of buffer[i]
        self.exhausted = False
        all_ids = list(range(len(shards.urls)))
        if not mixture:
            self.loops = [_SourceLoop(self, 0, None, all_ids)]
            self.weights = None
        else:
            if max_epochs is not None:
                raise ValueError("a source mixture needs an infinite stream (max_epochs=None)")
            names = sorted(mixture)
            bad = {k: v for k, v in mixture.items() if not (float(v) >= 0.0)}
            if bad or sum(mixture.values()) <= 0:
                raise ValueError(f"mixture weights must be >= 0 and not all 0, got {mixture!r}")
            known = set().union(*(s for s in shards.sources if s is not None)) if any(shards.sources) else None
            self.loops = []
            for i, name in enumerate(names):
                if known is not None and all(s is not None for s in shards.sources) and name not in known:
                    raise ValueError(f"mixture source {name!r} is not in the shards; their sources: {sorted(known)}")
                ids = [j for j in all_ids if shards.sources[j] is None or name in shards.sources[j]]
                self.loops.append(_SourceLoop(self, i + 1, name, ids))
            w = np.array([float(mixture[n]) for n in names])
            self.weights = w / w.sum()

    # -- iteration -----------------------------------------------------------------------------
    def _pull(self) -> Doc | None:
        if self.weights is None:
            doc = self.loops[0].next()
        else:
            doc = self.loops[int(self.rng.choice(len(self.loops), p=self.weights))].next()
        if doc is not None:
            self.stats["documents"] += 1
        return doc

    def next(self) -> Doc | None:
        """Next document after the shuffle buffer; None at the end of a finite stream."""
        if self.buffer_size <= 1:
            return self._pull()
        buf, refs = self.buffer, self._refs
        while len(buf) < self.buffer_size and not self.exhausted:
            doc = self._pull()
            if doc is None:
                self.exhausted = True
            else:
                refs[len(buf)] = (doc.shard, doc.index)
                buf.append(doc)
        if not buf:
            return None
        j = int(self.rng.integers(len(buf)))
        doc = buf[j]
        buf[j] = buf[-1]
        refs[j] = refs[len(buf) - 1]
        buf.pop()
        return doc

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        # (n, 2) int64 as bytes: a tensor would cross the worker queue through a new shared-memory
        # segment on every batch (~3x slower loading); bytes also load with weights_only=True
        refs = self._refs[: len(self.buffer)].tobytes()
        # b"" pickles (protocol 2) as a call to builtins.bytes, which torch.load(weights_only=True) --
        # Lightning's default when resuming -- refuses; non-empty bytes go through _codecs.encode, allowed
        refs = refs if refs else None
        return {
            "reader": [self.reader_id, self.n_readers],
            "loops": [loop.state_dict() for loop in self.loops],
            "buffer": refs,  # shard id, sample index of each buffered document — re-read on restore
            "exhausted": self.exhausted,
            "rng": self.rng.bit_generator.state,
            "bad_shards": self.bad_shard_list(),
        }

    def load_state_dict(self, state: dict) -> None:
        reader = [int(x) for x in state["reader"]]
        if reader != [self.reader_id, self.n_readers]:
            raise ValueError(
                f"data resume state belongs to reader {reader[0]} of {reader[1]} but this is reader "
                f"{self.reader_id} of {self.n_readers}; resume with the same world size and num_workers"
            )
        if len(state["loops"]) != len(self.loops):
            raise ValueError(f"data resume state has {len(state['loops'])} sources, the mixture has {len(self.loops)}")
        for loop, st in zip(self.loops, state["loops"]):
            loop.load_state_dict(st)
        self.exhausted = bool(state["exhausted"])
        self.rng.bit_generator.state = state["rng"]
        self.bad_shards = {int(i): str(why) for i, why in state.get("bad_shards", ())}  # absent: older runs
        raw = state["buffer"] or b""
        refs = [(int(s), int(i)) for s, i in np.frombuffer(raw, dtype=np.int64).reshape(-1, 2).tolist()]
        self.buffer = self.fetch(refs)
        self._refs[: len(refs)] = np.asarray(refs, dtype=np.int64).reshape(-1, 2)

    def bad_shard_list(self) -> list[list]:
        """``[[shard id, why], ...]`` (plain values: loads with ``weights_only=True``)."""
        return [[i, why] for i, why in sorted(self.bad_shards.items())]

    def fetch(self, refs: list[tuple[int, int]]) -> list[Doc]:
        """Re-read the documents ``refs`` = [(shard id, sample index)], in the given order."""
        by_shard: dict[int, set[int]] = defaultdict(set)
        for shard, index in refs:
            by_shard[shard].add(index)
        found: dict[tuple[int, int], Doc] = {}
        for shard, wanted in by_shard.items():
            url = self.shards.urls[shard]
            last = max(wanted)
            for index, key, parts in iter_shard(url, self.exts, start=min(wanted), wanted=lambda i, k: i in wanted):
                arrays = _decode(parts, self.exts, url, key)
                if self.vocab_size is not None:
                    _check_vocab(arrays, self.vocab_size, self.vocab_owner, url, key)
                found[(shard, index)] = Doc(shard, index, arrays)
                if index >= last:
                    break
        missing = [r for r in refs if r not in found]
        if missing:
            raise ValueError(
                f"cannot restore the data stream: sample {missing[0][1]} of shard "
                f"{self.shards.urls[missing[0][0]]!r} is gone; were the shards changed since the checkpoint?"
            )
        return [found[r] for r in refs]
