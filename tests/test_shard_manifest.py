"""One owner of the shard format (``lightning_redllm.data.manifest``): the converters write through it,
the DataModule's loader reads through it, and nothing else spells the format name."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import data_pipelines.shards as pipeline_shards
from data_pipelines.jsonl import iter_records, write_jsonl
from data_pipelines.redpajama import convert_redpajama
from lightning_redllm.assets import asset_path
from lightning_redllm.data import PretrainDataModule, open_shards
from lightning_redllm.data import manifest as owner
from lightning_redllm.data.synthetic import write_pretrain_shards

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Real text converted by the pipeline (two sources, small shards)."""
    tmp = tmp_path_factory.mktemp("manifest")
    root = asset_path("corpus", "redpajama")
    src = tmp / "rp"
    write_jsonl(src / "book" / "b.jsonl", list(iter_records(root / "book" / "val-00000.jsonl.zst"))[:8])
    write_jsonl(src / "jargon" / "j.jsonl", list(iter_records(root / "jargon" / "val-00000.jsonl.zst"))[:4])
    out = tmp / "shards"
    m = convert_redpajama([src], out, "bundled-bpe-4k", tokens_per_shard=2000, workers=1, progress=False)
    return out, m


def test_pipeline_writes_what_the_loader_reads_through_the_owner(converted):
    out, written = converted
    assert pipeline_shards.FORMAT is owner.FORMAT and pipeline_shards.read_manifest is owner.read_manifest
    on_disk = owner.read_manifest(out)
    assert on_disk == written and on_disk["format"] == owner.FORMAT and set(owner.REQUIRED) <= set(on_disk)
    shard_set = open_shards(str(out / "shard-*.tar"), kind="pretrain")
    loaded = shard_set.manifest
    assert loaded.kind == "pretrain" and loaded.tokenizer == on_disk["tokenizer"]
    assert sorted(loaded.shards) == [s["name"] for s in on_disk["shards"]] and len(loaded.shards) >= 2
    # and the DataModule streams it, with the manifest's tokenizer
    dm = PretrainDataModule(train_shards=str(out / "shard-*.tar"), seq_len=64, batch_size=2, num_workers=0)
    batch = next(iter(dm.train_dataloader()))
    assert dm.tokenizer_info["fingerprint"] == on_disk["tokenizer"]["fingerprint"]
    assert all(v.numel() > 0 for v in batch.values()) and batch


def test_synthetic_shards_write_through_the_owner(tmp_path):
    write_pretrain_shards(tmp_path, [("web", np.arange(4, 20, dtype=np.uint16))], docs_per_shard=1)
    m = owner.read_manifest(tmp_path)
    assert m["errors"] == {} and m["totals"] == {"documents": 1, "tokens": 16} and m["complete"] is True


def test_a_format_change_moves_writer_and_reader_together(tmp_path, monkeypatch):
    """Bump the format in the owner only: the pipeline writes the new name, the loader accepts it and
    refuses the old one (nothing else holds a copy of the name)."""
    monkeypatch.setattr(owner, "FORMAT", "lightning_redllm.shards/99")
    write_pretrain_shards(tmp_path / "new", [("web", np.arange(4, 20, dtype=np.uint16))], docs_per_shard=1)
    assert json.loads((tmp_path / "new" / "manifest.json").read_text())["format"] == "lightning_redllm.shards/99"
    open_shards(str(tmp_path / "new" / "*.tar"), kind="pretrain")
    bundled = asset_path("shards", "pretrain", "val", "manifest.json")
    with pytest.raises(ValueError, match=r"manifest\.json: not a lightning_redllm\.shards/99 shard manifest"):
        owner.read_manifest(bundled)


@pytest.mark.parametrize("key,value,needle", [
    ("kind", "finetune", "kind 'finetune'"), ("dtype", "float32", "dtype 'float32'"),
    ("shards", [{"documents": 1}], "'shards' must be a list of entries with a 'name'"),
    ("tokenizer", "bpe", "'tokenizer' must be a mapping"), ("errors", None, "lacks keys ['errors']"),
])
def test_malformed_manifest_names_file_and_key(tmp_path, key, value, needle):
    write_pretrain_shards(tmp_path, [("web", np.arange(4, 20, dtype=np.uint16))], docs_per_shard=1)
    path = tmp_path / "manifest.json"
    raw = json.loads(path.read_text())
    if value is None:
        del raw[key]
    else:
        raw[key] = value
    path.write_text(json.dumps(raw))
    for read in (lambda: owner.read_manifest(tmp_path), lambda: open_shards(str(tmp_path / "*.tar"), kind="pretrain")):
        with pytest.raises(ValueError) as err:
            read()
        assert str(path) in str(err.value) and needle in str(err.value), str(err.value)


def test_nothing_else_spells_the_format_name():
    spelled = [str(p.relative_to(ROOT)) for folder in ("lightning_redllm", "data_pipelines", "benchmarks")
               for p in (ROOT / folder).rglob("*.py") if re.search(r"lightning_redllm\.shards/\d", p.read_text())]
    assert spelled == ["lightning_redllm/data/manifest.py"], spelled
