"""Pretraining stream: packing exactness, splitting, mixture, errors, exact resume with workers."""
from collections import Counter

import numpy as np
import pytest
import torch

from lightning_redllm.data import PretrainDataModule, PretrainDataset, ResumableDataLoader
from lightning_redllm.data.synthetic import random_documents, write_pretrain_shards

SEQ = 16


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    docs = random_documents(240, sources=("web", "code", "wiki"), max_len=40, seed=1)
    write_pretrain_shards(root / "train", docs, docs_per_shard=30)  # 8 shards
    write_pretrain_shards(root / "val", random_documents(50, max_len=40, seed=2), docs_per_shard=25)
    return root, docs


def _ds(root, **kw):
    kw = dict(seq_len=SEQ, rank=0, world_size=1, seed=5) | kw
    return PretrainDataset(str(root / "train"), **kw)


@pytest.mark.parametrize("split", ["shard", "document"])
def test_packing_one_epoch_is_exact(corpus, split):
    """Over one epoch with 2 workers: emitted tokens + remainders == all tokens (multiset)."""
    root, docs = corpus
    ds = _ds(root, shuffle_buffer=7, max_epochs=1, split=split)
    emitted, tails = [], []
    for worker in range(2):
        it = ds.iterator(worker, 2)
        for item in it:
            assert item["tokens"].shape == (SEQ,) and item["tokens"].dtype == torch.long
            emitted.append(item["tokens"].numpy())
        tails.append(it.dropped)
        assert it.stats["dropped_tokens"] == len(it.dropped) < SEQ
    every = np.concatenate([t for _, t in docs])
    got = np.concatenate(emitted + tails)
    assert Counter(got.tolist()) == Counter(every.tolist())


def test_packing_order_without_shuffle(corpus):
    """No shuffling, one reader: the stream is exactly the documents concatenated and cut."""
    root, docs = corpus
    out = torch.stack([x["tokens"] for x in _ds(root, shuffle=False, max_epochs=1)])  # (N, SEQ)
    every = np.concatenate([t for _, t in docs])
    n = len(every) // SEQ
    assert out.shape == (n, SEQ)
    assert np.array_equal(out.flatten().numpy(), every[: n * SEQ])


def test_infinite_stream_and_epochs(corpus):
    root, docs = corpus
    total = sum(len(t) for _, t in docs)
    it = _ds(root, shuffle_buffer=5).iterator(0, 1)
    for _ in range(3 * total // SEQ):
        next(it)
    assert it.stream.loops[0].epoch >= 2
    assert it.stats["tokens"] == 3 * total // SEQ * SEQ


def test_epochs_reshuffle_and_seed_determinism(corpus):
    root, _ = corpus
    a = [x["tokens"] for x, _ in zip(_ds(root, shuffle_buffer=5), range(30))]
    b = [x["tokens"] for x, _ in zip(_ds(root, shuffle_buffer=5), range(30))]
    c = [x["tokens"] for x, _ in zip(_ds(root, shuffle_buffer=5, seed=6), range(30))]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    loop = _ds(root).iterator(0, 1).stream.loops[0]
    assert sorted(loop.order(0)) == sorted(loop.order(1)) and loop.order(0) != loop.order(1)


def test_ranks_and_workers_partition_shards(corpus):
    root, _ = corpus
    seen = []
    for rank in range(2):
        ds = _ds(root, rank=rank, world_size=2, split="shard")
        for worker in range(2):
            seen += ds.iterator(worker, 2).stream.loops[0].order(0)
    assert sorted(seen) == list(range(8))


def test_fewer_shards_than_readers(corpus):
    root, _ = corpus
    ds = _ds(root, split="shard", rank=1, world_size=3)
    with pytest.raises(ValueError, match=r"8 shard\(s\) cannot be split over 9 readers \(3 rank\(s\) x 3"):
        ds.iterator(0, 3)
    with pytest.raises(ValueError, match="cannot be split over 10 readers"):  # raised before forking workers
        ResumableDataLoader(_ds(root, split="shard", world_size=5, rank=0), batch_size=2, num_workers=2)
    # "auto" falls back to document splitting and still partitions the documents
    seen = Counter()
    for worker in range(9):
        it = _ds(root, split="auto", world_size=1, max_epochs=1).iterator(worker, 9)
        assert it.stream.loops[0].split == "document"
        while (doc := it.stream.next()) is not None:
            seen[(doc.shard, doc.index)] += 1
    assert len(seen) == 240 and set(seen.values()) == {1}


def test_mixture_weights(tmp_path):
    rng = np.random.default_rng(0)
    docs = [("a", np.append(rng.integers(100, 200, 15), 3)) for _ in range(40)]
    docs += [("b", np.append(rng.integers(200, 300, 15), 3)) for _ in range(40)]
    write_pretrain_shards(tmp_path, docs, docs_per_shard=20)  # shards 0-1: only a, 2-3: only b
    ds = PretrainDataset(str(tmp_path), seq_len=16, mixture={"a": 0.8, "b": 0.2}, shuffle_buffer=4,
                         rank=0, world_size=1)
    tokens = torch.cat([x["tokens"] for x, _ in zip(ds, range(400))])
    frac_a = ((tokens >= 100) & (tokens < 200)).sum() / ((tokens >= 100) & (tokens < 300)).sum()
    assert 0.75 < float(frac_a) < 0.85  # 400 sequences = 400 documents drawn
    with pytest.raises(ValueError, match="mixture source 'c' is not in the shards"):
        PretrainDataset(str(tmp_path), seq_len=16, mixture={"a": 1, "c": 1}, rank=0, world_size=1).iterator()


def _take(loader, n):
    it = iter(loader)
    return [next(it)["tokens"] for _ in range(n)]


@pytest.mark.parametrize("num_workers", [2])
def test_exact_resume_with_workers(corpus, num_workers):
    root, _ = corpus
    ds = _ds(root, shuffle_buffer=6, mixture={"web": 0.5, "code": 0.3, "wiki": 0.2})

    def make():
        return ResumableDataLoader(ds, batch_size=3, num_workers=num_workers)

    full = _take(make(), 40)
    first = make()
    head = _take(first, 15)
    state = first.state_dict()
    assert first.stats()["tokens"] == 15 * 3 * SEQ
    del first
    resumed = make()
    resumed.load_state_dict(state)
    tail = _take(resumed, 25)
    assert all(torch.equal(a, b) for a, b in zip(full, head + tail))
    with pytest.raises(ValueError, match="num_workers=2 but this run has world_size=1, num_workers=1"):
        ResumableDataLoader(ds, batch_size=3, num_workers=1).load_state_dict(state)


def test_resume_rejects_changed_config(corpus):
    root, _ = corpus
    it = _ds(root, shuffle_buffer=4).iterator(0, 1)
    next(it)
    state = it.state_dict()
    with pytest.raises(ValueError, match="seq_len"):
        PretrainDataset(str(root / "train"), seq_len=SEQ * 2, rank=0, world_size=1, seed=5,
                        shuffle_buffer=4).iterator(0, 1).load_state_dict(state)


def test_datamodule_batches_and_val(corpus):
    root, _ = corpus
    dm = PretrainDataModule(str(root / "train"), str(root / "val"), seq_len=SEQ, batch_size=4, num_workers=0,
                            shuffle_buffer=8, val_batches=3)
    assert (dm.bos_id, dm.eos_id, dm.pad_id, dm.vocab_size) == (2, 3, 0, 4096)
    batch = next(iter(dm.train_dataloader()))
    assert batch["tokens"].shape == (4, SEQ) and batch["tokens"].dtype == torch.long
    val1 = [b["tokens"] for b in dm.val_dataloader()]
    val2 = [b["tokens"] for b in dm.val_dataloader()]
    assert len(val1) == 3 and all(torch.equal(a, b) for a, b in zip(val1, val2))
    dm2 = PretrainDataModule(str(root / "train"), str(root / "val"), seq_len=SEQ, batch_size=4, num_workers=2)
    val_all = [b["tokens"] for b in dm2.val_dataloader()]
    assert sum(len(v) for v in val_all) == sum(1 for _ in dm2.val_dataset().iterator(0, 2)) + sum(
        1 for _ in dm2.val_dataset().iterator(1, 2))


def test_datamodule_errors(corpus, tmp_path):
    root, _ = corpus
    with pytest.raises(ValueError, match="tokenizer fingerprint mismatch"):
        PretrainDataModule(str(root / "train"), tokenizer_fingerprint="sha256:nope").train_dataloader()
    with pytest.raises(ValueError, match="no shard matches"):
        PretrainDataModule(str(tmp_path / "nothing" / "*.tar")).train_dataloader()
