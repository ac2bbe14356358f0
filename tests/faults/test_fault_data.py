"""Data faults during a real fit: a truncated or corrupt tar in the middle of the stream, a shard
that vanishes, a shard from another tokenizer, a missing named shard -> ``on_bad_shard``: ``raise``
(error naming the shard) or ``skip`` (training goes on; ``data/bad_shards`` counts it)."""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import tarfile

import numpy as np
import pytest
from fault_helpers import Steps, cli, fit_config, read_step_log, reader_order, repack_shards, tiny_module, tiny_trainer

from lightning_redllm.data import BadShardError, DataStatsLogger, PretrainDataModule

SEED, WORKERS, STEPS = 1234, 2, 24


@pytest.fixture
def shards(tmp_path):
    """10 two-document shards; ``target`` is the 2nd shard worker 0 reads (reached around step 8)."""
    d = tmp_path / "shards"
    repack_shards(d, docs_per_shard=2, n_shards=10)
    target = reader_order(d, num_workers=WORKERS, seed=SEED)[1]
    return d, target


def _second_doc_members(path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tf:
        members = tf.getmembers()
    keys = list(dict.fromkeys(m.name.split(".", 1)[0] for m in members))
    return [m for m in members if m.name.split(".", 1)[0] == keys[1]]


def truncate(path):
    """Cut the file in the middle of the second document's token array (like an interrupted copy)."""
    tokens = next(m for m in _second_doc_members(path) if m.name.endswith(".tokens.npy"))
    data = open(path, "rb").read()
    open(path, "wb").write(data[: tokens.offset_data + tokens.size // 2])


def corrupt_header(path):
    """Overwrite the tar header of the second document with garbage (checksum fails)."""
    second = _second_doc_members(path)[0]
    with open(path, "r+b") as f:
        f.seek(second.offset)
        f.write(np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8).tobytes())


def foreign_ids(path):
    """Same names and manifest, but token ids from a larger vocabulary (another tokenizer)."""
    out = io.BytesIO()
    with tarfile.open(path) as src, tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name.endswith(".tokens.npy"):
                arr = np.load(io.BytesIO(data)).astype(np.uint16) + np.uint16(4096)
                buf = io.BytesIO()
                np.save(buf, arr)
                data = buf.getvalue()
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    open(path, "wb").write(out.getvalue())


FAULTS = {"truncated": truncate, "corrupt-header": corrupt_header, "foreign-ids": foreign_ids, "vanished": None}


def _fit(root, train_shards, policy, *, workers=WORKERS, before_fit=None):
    dm = PretrainDataModule(train_shards=train_shards, seq_len=64, batch_size=8, num_workers=workers,
                            shuffle_buffer=0, on_bad_shard=policy, seed=SEED)
    rec = Steps()
    t = tiny_trainer(root, STEPS, callbacks=[rec, DataStatsLogger(every_n_steps=1)])
    if before_fit is not None:
        dm.train_set  # the shard list is fixed here, as at the start of a real run
        before_fit()
    t.fit(tiny_module(), datamodule=dm)
    return t, rec


@pytest.mark.parametrize("fault", list(FAULTS))
def test_bad_shard_mid_stream_raise_names_it(tmp_path, shards, fault):
    d, _ = shards
    target = reader_order(d, num_workers=1, seed=SEED)[1]  # the single reader's 2nd shard
    before = (lambda: os.remove(target)) if fault == "vanished" else None
    if FAULTS[fault]:
        FAULTS[fault](target)
    rec = Steps()
    # in the main process: a worker's error would be the same BadShardError, re-raised by the
    # DataLoader (covered through the CLI below), but torchdata then takes ~10 s to reap the workers
    with pytest.raises(BadShardError) as info:
        dm = PretrainDataModule(train_shards=str(d), seq_len=64, batch_size=8, num_workers=0,
                                shuffle_buffer=0, on_bad_shard="raise", seed=SEED)
        if before:
            dm.train_set
            before()
        tiny_trainer(tmp_path, STEPS, callbacks=[rec]).fit(tiny_module(), datamodule=dm)
    assert os.path.basename(target) in str(info.value)
    assert len(rec.records) >= 2  # it was met in the middle of the stream, after some training


@pytest.mark.parametrize("fault", list(FAULTS))
def test_bad_shard_mid_stream_skip_counts_it(tmp_path, shards, fault):
    d, target = shards
    if FAULTS[fault]:
        FAULTS[fault](target)
    before = (lambda: os.remove(target)) if fault == "vanished" else None
    t, rec = _fit(tmp_path, str(d), "skip", before_fit=before)
    assert t.global_step == STEPS
    assert all(r["loss"] is not None and math.isfinite(r["loss"]) for r in rec.records)
    assert float(t.callback_metrics["data/bad_shards"]) == 1.0


def _foreign_dir(tmp_path, d):
    other = tmp_path / "other-tokenizer"
    other.mkdir()
    shutil.copy(d / "shard-000000.tar", other / "shard-000000.tar")
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["tokenizer"].update(fingerprint="sha256:another-tokenizer", vocab_size=32768, name="mistral-32k")
    manifest["shards"] = manifest["shards"][:1]
    (other / "manifest.json").write_text(json.dumps(manifest))
    return str(other / "shard-000000.tar")


def test_shard_from_another_tokenizer_is_refused_before_training(tmp_path, shards):
    d, _ = shards
    foreign = _foreign_dir(tmp_path, d)
    rec = Steps()
    dm = PretrainDataModule(train_shards=[str(d), foreign], seq_len=64, batch_size=8, num_workers=0, seed=SEED)
    with pytest.raises(ValueError, match=r"different tokenizers.*another-tokenizer.*other-tokenizer/shard-000000\.tar"):
        tiny_trainer(tmp_path, STEPS, callbacks=[rec]).fit(tiny_module(), datamodule=dm)
    assert rec.records == []
    t, rec = _fit(tmp_path, [str(d), foreign], "skip", workers=0)
    assert t.global_step == STEPS and float(t.callback_metrics["data/bad_shards"]) == 1.0


def test_missing_named_shard(tmp_path, shards):
    d, _ = shards
    pattern = f"{d}/shard-{{000000..000010}}.tar"  # 11 names, 10 files
    rec = Steps()
    dm = PretrainDataModule(train_shards=pattern, seq_len=64, batch_size=8, num_workers=0, seed=SEED)
    with pytest.raises(ValueError, match=r"shard-000010\.tar"):
        tiny_trainer(tmp_path, STEPS, callbacks=[rec]).fit(tiny_module(), datamodule=dm)
    assert rec.records == []
    t, rec = _fit(tmp_path, pattern, "skip", workers=0)
    assert t.global_step == STEPS and float(t.callback_metrics["data/bad_shards"]) == 1.0


@pytest.mark.slow
def test_bad_shard_through_the_cli_is_one_line_naming_it(tmp_path, shards):
    d, target = shards
    truncate(target)
    data = {"class_path": "lightning_redllm.data.PretrainDataModule",
            "init_args": {"train_shards": str(d), "seq_len": 64, "batch_size": 8, "num_workers": WORKERS,
                          "shuffle_buffer": 0, "seed": SEED, "on_bad_shard": "raise"}}
    cfg = fit_config(tmp_path / "run", steps=STEPS, step_log=tmp_path / "steps.log", data=data, seed=SEED)
    r = cli(["fit", "--config", str(cfg)], cwd=tmp_path, guarded=True)
    assert r.returncode == 1
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert errors[0].startswith("error: BadShardError: cannot read shard") and str(target) in errors[0]
    assert len(read_step_log(tmp_path / "steps.log")) >= 4
