"""Instruction stream: truncation, eos, padding, counters, exact resume with workers."""
import numpy as np
import pytest
import torch

from lightning_redllm.data import InstructCollator, InstructDataModule, InstructDataset, ResumableDataLoader
from lightning_redllm.data.synthetic import write_instruct_shards

EOS, PAD = 3, 0


@pytest.fixture(scope="module")
def flan(tmp_path_factory):
    root = tmp_path_factory.mktemp("instruct")
    rng = np.random.default_rng(0)
    examples = [
        (f"task{i % 3}", rng.integers(4, 500, int(rng.integers(1, 30))), rng.integers(4, 500, int(rng.integers(1, 12))))
        for i in range(120)
    ]
    write_instruct_shards(root / "train", examples, docs_per_shard=20)  # 6 shards
    write_instruct_shards(root / "val", examples[:30], docs_per_shard=15)
    return root, examples


def _ds(root, **kw):
    kw = dict(eos_id=EOS, max_input_len=20, max_target_len=8, rank=0, world_size=1, seed=1) | kw
    return InstructDataset(str(root / "train"), **kw)


def test_truncation_eos_and_counters(flan):
    root, examples = flan
    it = _ds(root, shuffle=False, max_epochs=1).iterator()
    items = list(it)
    assert len(items) == len(examples)
    for item, (_, inputs, targets) in zip(items, examples):
        assert item["inputs"].tolist() == inputs[:20].tolist()
        assert item["targets"].tolist() == targets[:7].tolist() + [EOS]
        assert len(item["targets"]) <= 8
    assert it.stats["inputs_truncated"] == sum(len(i) > 20 for _, i, _ in examples) > 0
    assert it.stats["targets_truncated"] == sum(len(t) > 7 for _, _, t in examples) > 0
    assert it.stats["examples"] == len(examples)


def test_collator_padding():
    collate = InstructCollator(PAD, pad_to_multiple=4)
    batch = collate([
        {"inputs": torch.tensor([5, 6, 7, 8, 9]), "targets": torch.tensor([10, EOS])},
        {"inputs": torch.tensor([11]), "targets": torch.tensor([EOS])},
    ])
    assert batch["inputs"].tolist() == [[5, 6, 7, 8, 9, 0, 0, 0], [11, 0, 0, 0, 0, 0, 0, 0]]
    assert batch["input_lengths"].tolist() == [5, 1]
    assert batch["targets"].tolist() == [[10, EOS, 0, 0], [EOS, 0, 0, 0]]
    assert batch["target_lengths"].tolist() == [2, 1]
    assert all(v.dtype == torch.long for v in batch.values())


def test_exact_resume_with_workers(flan):
    root, _ = flan
    ds = _ds(root, shuffle_buffer=5)
    collate = InstructCollator(PAD, 64)

    def make():
        return ResumableDataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate)

    def take(loader, n):
        it = iter(loader)
        return [next(it) for _ in range(n)]

    full = take(make(), 70)  # > 2 epochs of 120 examples
    first = make()
    head = take(first, 23)
    state = first.state_dict()
    del first
    resumed = make()
    resumed.load_state_dict(state)
    tail = take(resumed, 47)
    for a, b in zip(full, head + tail):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.stats()["examples"] == 70 * 4


def test_datamodule(flan):
    root, _ = flan
    dm = InstructDataModule(str(root / "train"), str(root / "val"), max_input_len=20, max_target_len=8,
                            batch_size=4, num_workers=0, val_batches=2)
    batch = next(iter(dm.train_dataloader()))
    assert batch["inputs"].shape == (4, 64) and batch["targets"].shape == (4, 64)
    assert (batch["targets"][torch.arange(4), batch["target_lengths"] - 1] == EOS).all()
    val = list(dm.val_dataloader())
    assert len(val) == 2
    dm_full = InstructDataModule(str(root / "train"), str(root / "val"), batch_size=4, num_workers=2)
    assert sum(len(b["inputs"]) for b in dm_full.val_dataloader()) == 30


def test_missing_ids_without_manifest(tmp_path):
    write_instruct_shards(tmp_path, [("t", np.arange(4, 8), np.arange(4, 6))], manifest=False)
    dm = InstructDataModule(str(tmp_path), num_workers=0)
    with pytest.raises(ValueError, match="--data.eos_id"):
        dm.train_dataloader()
    dm = InstructDataModule(str(tmp_path), num_workers=0, eos_id=9, pad_id=1)
    batch = next(iter(dm.train_dataloader()))
    assert batch["targets"][0, :3].tolist() == [4, 5, 9] and batch["targets"][0, 3] == 1
