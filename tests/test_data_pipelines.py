"""Converters (RedPajama / FLAN -> shards), the shard format, resume, errors and the bundled assets."""
from __future__ import annotations

import hashlib
import json
import pathlib

import numpy as np
import pytest
import zstandard

from data_pipelines import flan as flan_cli
from data_pipelines import redpajama as rp_cli
from data_pipelines import train_tokenizer as tt_cli
from data_pipelines.convert import PROGRESS_NAME, ConversionError
from data_pipelines.flan import convert_flan
from data_pipelines.jsonl import iter_raw_lines, iter_records, write_jsonl
from data_pipelines.redpajama import convert_redpajama, discover_inputs
from data_pipelines.shards import (
    FORMAT,
    ShardWriter,
    brace_pattern,
    iter_shard,
    read_manifest,
    shard_paths,
)
from lightning_redllm.assets import asset_path
from lightning_redllm.tokenizer import load_tokenizer

TOK = "bundled-bpe-4k"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TOK)


@pytest.fixture(scope="module")
def real_docs():
    """Real documents from the bundled corpus (KJV chapters, jargon, python docs)."""
    root = asset_path("corpus", "redpajama")
    book = list(iter_records(root / "book" / "val-00000.jsonl.zst"))[:24]
    jargon = list(iter_records(root / "jargon" / "val-00000.jsonl.zst"))[:6]
    py = list(iter_records(root / "python_docs" / "val-00000.jsonl.zst"))[:3]
    return {"book": book, "jargon": jargon, "python_docs": py}


def _bad_zst(path: pathlib.Path, records: list[dict]) -> None:
    """A .jsonl.zst cut in the middle: the first part decodes, then the stream ends early."""
    data = b"".join(json.dumps(r).encode() + b"\n" for r in records)
    frame = zstandard.ZstdCompressor(level=3).compress(data)
    path.write_bytes(frame[: len(frame) * 3 // 4])


@pytest.fixture
def rp_root(tmp_path, real_docs):
    """A RedPajama-layout folder with good files and every kind of bad line."""
    root = tmp_path / "redpajama"
    write_jsonl(root / "book" / "book-000.jsonl.zst", real_docs["book"][:12])
    write_jsonl(root / "book" / "book-001.jsonl", real_docs["book"][12:])
    (root / "wikipedia").mkdir(parents=True)
    lines = [
        json.dumps(real_docs["jargon"][0]).encode(),
        b'{"text": "unterminated',                       # line 2: malformed json
        b'{"text": "caf\xe9 au lait"}',                   # line 3: latin-1, not utf-8
        b'{"text": "   ", "meta": {}}',                   # line 4: empty text
        b"",                                              # line 5: blank, ignored
        b'{"meta": {"title": "no text"}}',                # line 6: missing text
        json.dumps(real_docs["jargon"][1]).encode(),
        b'[1, 2, 3]',                                     # line 8: not an object
        json.dumps(real_docs["jargon"][2]).encode(),      # line 9, no trailing newline
    ]
    (root / "wikipedia" / "wiki.jsonl").write_bytes(b"\r\n".join(lines))
    # > 128 KiB, so zstd blocks before the cut still decode
    _bad_zst(root / "wikipedia" / "wiki-cut.jsonl.zst", (real_docs["python_docs"] + real_docs["jargon"][3:]) * 4)
    return root


def _read_dir(out: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def _tar_totals(out: pathlib.Path, manifest: dict) -> tuple[dict, list]:
    docs, tokens, samples = 0, 0, []
    for path in shard_paths(out, manifest):
        for key, sample in iter_shard(path):
            docs += 1
            tokens += sum(v.size for k, v in sample.items() if k.endswith(".npy"))
            samples.append((key, sample))
    return {"documents": docs, "tokens": tokens}, samples


# ---------------------------------------------------------------------------- readers / writer
def test_jsonl_reader_handles_crlf_multiframe_and_truncation(tmp_path):
    path = tmp_path / "multi.jsonl.zst"
    c = zstandard.ZstdCompressor()
    path.write_bytes(c.compress(b'{"a": 1}\r\n{"a": 2}\n') + c.compress(b'{"a": 3}'))
    assert [r.data for r in iter_raw_lines(path)] == [b'{"a": 1}', b'{"a": 2}', b'{"a": 3}']
    assert [r.line for r in iter_raw_lines(path, start_after=2)] == [3]
    cut = tmp_path / "cut.jsonl.zst"
    _bad_zst(cut, [{"text": f"document number {i} " * 20} for i in range(200)])
    items = list(iter_raw_lines(cut))
    assert items[-1].data is None and "truncated" in items[-1].error
    assert all(json.loads(r.data) for r in items[:-1])
    garbage = tmp_path / "garbage.jsonl.zst"
    garbage.write_bytes(b"this is not zstd at all\n")
    [item] = list(iter_raw_lines(garbage))
    assert item.data is None and "corrupt" in item.error


def test_shard_writer_is_atomic(tmp_path):
    path = tmp_path / "shard-000000.tar"
    with pytest.raises(RuntimeError):
        with ShardWriter(path) as w:
            w.write("book-000000000", {"tokens.npy": np.arange(5, dtype=np.uint16), "source.txt": "book"})
            assert w.tmp_path.exists() and not path.exists()
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with ShardWriter(path) as w:
        w.write("book-000000000", {"tokens.npy": np.arange(5, dtype=np.uint16), "source.txt": "book"})
        with pytest.raises(ValueError, match="key"):
            w.write("bad.key", {"source.txt": "x"})
    [(key, sample)] = list(iter_shard(path))
    assert key == "book-000000000" and sample["source.txt"] == "book"
    assert sample["tokens.npy"].dtype == np.uint16 and sample["tokens.npy"].tolist() == [0, 1, 2, 3, 4]
    assert brace_pattern(12) == "shard-{000000..000011}.tar" and brace_pattern(1) == "shard-000000.tar"


def test_read_manifest_errors(tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path)):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="format"):
        read_manifest(tmp_path)


# ---------------------------------------------------------------------------- RedPajama
def test_redpajama_conversion(rp_root, tmp_path, tok, real_docs, caplog):
    out = tmp_path / "out"
    m = convert_redpajama([rp_root], out, TOK, tokens_per_shard=3000, workers=1, progress=False)
    assert read_manifest(out) == m
    assert m["format"] == FORMAT and m["kind"] == "pretrain" and m["complete"] is True
    assert m["dtype"] == "uint16"
    assert m["tokenizer"]["fingerprint"] == tok.fingerprint and m["tokenizer"]["name"] == TOK
    assert (m["tokenizer"]["vocab_size"], m["tokenizer"]["eos_id"]) == (4096, 3)
    assert len(m["shards"]) >= 3
    # every kind of bad line is counted, with file and line
    errors = m["errors"]
    assert {k: errors[k] for k in ("malformed_json", "not_utf8", "empty_text", "truncated_file")} == {
        "malformed_json": 2, "not_utf8": 1, "empty_text": 2, "truncated_file": 1}
    examples = "\n".join(errors["examples"])
    for where in ("wiki.jsonl:2: malformed_json", "wiki.jsonl:3: not_utf8", "wiki.jsonl:4: empty_text",
                  "wiki.jsonl:6: empty_text", "wiki.jsonl:8: malformed_json", "wiki-cut.jsonl.zst:"):
        assert where in examples
    assert "wiki.jsonl:3" in caplog.text  # also logged
    # manifest numbers == what is in the tars
    counted, samples = _tar_totals(out, m)
    assert counted == {"documents": m["totals"]["documents"], "tokens": m["totals"]["tokens"]}
    assert sum(s["tokens"] for s in m["shards"]) == m["totals"]["tokens"]
    assert m["totals"]["sources"]["book"]["documents"] == len(real_docs["book"])
    assert m["totals"]["sources"]["wikipedia"]["documents"] >= 3  # 3 good lines + the zst's intact part
    for s in m["shards"]:
        assert (out / s["name"]).stat().st_size == s["bytes"]
    # samples: keys, eos, source, exact text round trip
    by_key = dict(samples)
    assert sorted(by_key) == sorted(
        [f"book-{i:09d}" for i in range(len(real_docs["book"]))]
        + [f"wikipedia-{i:09d}" for i in range(m["totals"]["sources"]["wikipedia"]["documents"])])
    for key, sample in samples:
        t = sample["tokens.npy"]
        assert t.dtype == np.uint16 and t[-1] == tok.eos_id and tok.eos_id not in t[:-1]
        assert sample["source.txt"] == key.split("-")[0]
    texts = {tok.decode(s["tokens.npy"]) for _, s in samples}
    assert {d["text"] for d in real_docs["book"]} <= texts
    assert real_docs["jargon"][2]["text"] in texts  # the last line without newline


def test_workers_do_not_change_output(rp_root, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    convert_redpajama([rp_root], a, TOK, tokens_per_shard=3000, workers=1, chunk_size=2, progress=False)
    convert_redpajama([rp_root], b, TOK, tokens_per_shard=3000, workers=3, chunk_size=5, progress=False)
    assert _read_dir(a) == _read_dir(b)


def test_resume_after_lost_manifest_and_shard(rp_root, tmp_path):
    out = tmp_path / "out"
    m = convert_redpajama([rp_root], out, TOK, tokens_per_shard=3000, workers=1, progress=False)
    before = _read_dir(out)
    kept = {s["name"]: (out / s["name"]).stat().st_mtime_ns for s in m["shards"][:-1]}
    (out / "manifest.json").unlink()
    (out / m["shards"][-1]["name"]).unlink()
    m2 = convert_redpajama([rp_root], out, TOK, tokens_per_shard=3000, workers=2, progress=False)
    assert m2 == m and _read_dir(out) == before
    assert {n: (out / n).stat().st_mtime_ns for n in kept} == kept  # finished shards not rewritten
    # a complete directory is left alone
    assert convert_redpajama([rp_root], out, TOK, tokens_per_shard=3000, progress=False) == m
    # other settings need --overwrite
    with pytest.raises(ConversionError, match="overwrite"):
        convert_redpajama([rp_root], out, TOK, tokens_per_shard=999, progress=False)
    m3 = convert_redpajama([rp_root], out, TOK, tokens_per_shard=999, progress=False, overwrite=True)
    assert len(m3["shards"]) > len(m["shards"])


def test_resume_after_interrupt(rp_root, tmp_path, monkeypatch):
    ref = tmp_path / "ref"
    convert_redpajama([rp_root], ref, TOK, tokens_per_shard=2000, progress=False)
    out = tmp_path / "out"
    real_close, calls = ShardWriter.close, []

    def close_then_die(self):
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while finishing the third shard
        calls.append(self.path.name)
        return real_close(self)

    monkeypatch.setattr(ShardWriter, "close", close_then_die)
    with pytest.raises(KeyboardInterrupt):
        convert_redpajama([rp_root], out, TOK, tokens_per_shard=2000, progress=False)
    monkeypatch.setattr(ShardWriter, "close", real_close)
    assert sorted(p.name for p in out.iterdir()) == [PROGRESS_NAME, "shard-000000.tar", "shard-000001.tar"]
    convert_redpajama([rp_root], out, TOK, tokens_per_shard=2000, workers=2, progress=False)
    assert _read_dir(out) == _read_dir(ref)


def test_strict_mode_fails_with_file_and_line(rp_root, tmp_path, capsys):
    wiki = rp_root / "wikipedia" / "wiki.jsonl"
    with pytest.raises(ConversionError, match=r"wiki\.jsonl:2: malformed_json"):
        convert_redpajama([wiki], tmp_path / "o1", TOK, source="wikipedia", strict=True, progress=False)
    assert not (tmp_path / "o1" / "manifest.json").exists()
    assert not list((tmp_path / "o1").glob("*.tmp"))
    rc = rp_cli.main([str(rp_root), "-o", str(tmp_path / "o2"), "--tokenizer", TOK, "--strict",
                      "--no-progress", "--workers", "2", "-q"])
    assert rc == 2
    assert "wiki-cut.jsonl.zst:" in capsys.readouterr().err  # first bad line in input order


def test_cli_and_flat_source(rp_root, tmp_path):
    out = tmp_path / "cli"
    rc = rp_cli.main([str(rp_root / "book"), "--source", "book", "-o", str(out), "--tokenizer",
                      str(asset_path("tokenizers", "bundled-bpe-4k.json")), "--tokens-per-shard", "5000",
                      "--workers", "1", "--no-progress", "-q"])
    assert rc == 0
    m = read_manifest(out)
    assert list(m["totals"]["sources"]) == ["book"] and m["errors"]["examples"] == []
    with pytest.raises(ValueError, match="--source"):
        discover_inputs([rp_root / "book"])
    with pytest.raises(ValueError, match="no input files"):
        discover_inputs([rp_root], include=["*.parquet"])
    for main in (rp_cli.main, flan_cli.main, tt_cli.main):
        with pytest.raises(SystemExit) as e:
            main(["--help"])
        assert e.value.code == 0


def test_sources_are_interleaved_by_size(tmp_path):
    for src, n in (("big", 4), ("small", 1)):
        for i in range(n):
            write_jsonl(tmp_path / src / f"{i}.jsonl", [{"text": "x" * 100}] * 10)
    order = [(i.source, i.path.name) for i in discover_inputs([tmp_path])]
    assert order == [("big", "0.jsonl"), ("big", "1.jsonl"), ("small", "0.jsonl"), ("big", "2.jsonl"),
                     ("big", "3.jsonl")]
    assert [i.source for i in discover_inputs([tmp_path], by_source=True)] == ["big"] * 4 + ["small"]


# ---------------------------------------------------------------------------- FLAN
def test_flan_conversion(tmp_path, tok):
    recs = list(iter_records(asset_path("corpus", "flan", "val.jsonl.zst")))[:40]
    src = tmp_path / "flan.jsonl.zst"
    write_jsonl(src, recs[:20] + [{"inputs": "q", "targets": "", "task_name": "t"}]
                + [{"inputs": "q?", "targets": "a.", "_task_name": "glue/cola:2.0.0"}] + recs[20:])
    out = tmp_path / "instruct"
    m = convert_flan([src], out, TOK, tokens_per_shard=600, workers=2, progress=False)
    assert m["kind"] == "instruct" and m["errors"]["empty_text"] == 1
    assert m["errors"]["examples"][0].startswith(f"{src}:21: empty_text")
    counted, samples = _tar_totals(out, m)
    assert counted == {"documents": 41, "tokens": m["totals"]["tokens"]}
    assert m["totals"]["input_tokens"] + m["totals"]["target_tokens"] == m["totals"]["tokens"]
    assert sum(s["sources"].get("glue/cola:2.0.0", {}).get("documents", 0) for s in m["shards"]) == 1
    keys = [k for k, _ in samples]
    assert "glue_cola_2_0_0-000000000" in keys and all("." not in k for k in keys)
    by_key = dict(samples)
    for i, r in enumerate(recs[:3]):
        sample = samples[i][1]
        assert sample["task.txt"] == r["task_name"]
        assert tok.decode(sample["inputs.npy"]) == r["inputs"] and tok.decode(sample["targets.npy"]) == r["targets"]
        assert tok.eos_id not in sample["targets.npy"]
    assert by_key["glue_cola_2_0_0-000000000"]["targets.npy"].tolist() == tok.encode("a.")


def test_train_tokenizer_cli(tmp_path):
    out = tmp_path / "tok.json"
    rc = tt_cli.main([str(asset_path("corpus", "redpajama")), "--include", "val-*.jsonl.zst",
                      "--vocab-size", "400", "--max-bytes", "2e5", "-o", str(out)])
    assert rc == 0
    t = load_tokenizer(out)
    assert t.vocab_size == 400 and (t.pad_id, t.unk_id, t.bos_id, t.eos_id) == (0, 1, 2, 3)


# ---------------------------------------------------------------------------- bundled assets
@pytest.mark.parametrize("kind,split,min_shards", [
    ("pretrain", "train", 8), ("pretrain", "val", 1), ("instruct", "train", 4), ("instruct", "val", 1)])
def test_bundled_shards_are_consistent(kind, split, min_shards, tok):
    out = asset_path("shards", kind, split)
    m = read_manifest(out)
    assert m["kind"] == kind and m["complete"] is True and len(m["shards"]) >= min_shards
    assert m["tokenizer"]["fingerprint"] == tok.fingerprint
    assert m["tokenizer"]["fingerprint"] == "sha256:" + hashlib.sha256(
        asset_path("tokenizers", "bundled-bpe-4k.json").read_bytes()).hexdigest()
    assert m["tokenizer"]["name"] == TOK and m["tokenizer"]["vocab_size"] == 4096
    assert sum(m["errors"][k] for k in ("malformed_json", "not_utf8", "empty_text", "truncated_file")) == 0
    assert sorted(p.name for p in out.glob("shard-*.tar")) == [s["name"] for s in m["shards"]]
    counted, _ = _tar_totals(out, m)
    assert counted == {"documents": m["totals"]["documents"], "tokens": m["totals"]["tokens"]}
    for s in m["shards"]:
        assert (out / s["name"]).stat().st_size == s["bytes"]


def test_bundled_corpus_and_licenses():
    assets = asset_path()
    for source in ("book", "jargon", "fortunes", "python_docs"):
        for split in ("train", "val"):
            files = sorted((assets / "corpus" / "redpajama" / source).glob(f"{split}-*.jsonl.zst"))
            assert files, (source, split)
            rec = next(iter_records(files[0]))
            assert rec["text"].strip() and rec["meta"]["license"]
    for split in ("train", "val"):
        rec = next(iter_records(assets / "corpus" / "flan" / f"{split}.jsonl.zst"))
        assert {"inputs", "targets", "task_name", "template_type"} <= set(rec)
    for f in ("SOURCES.md", "tokenizers/mistral-v1-32k.LICENSE", "licenses/Python-LICENSE.txt",
              "licenses/fortunes-min.copyright", "licenses/jargon-text.copyright",
              "licenses/bible-kjv-text.copyright"):
        assert (assets / f).is_file(), f
    total = sum(p.stat().st_size for p in assets.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert total < 15_000_000


@pytest.mark.slow
def test_bundled_build_is_reproducible(tmp_path):
    """FLAN set, 4k BPE and all shards rebuild byte for byte from the committed corpus (~10 s)."""
    import shutil

    from data_pipelines import build_bundled

    assets = asset_path()
    shutil.copytree(assets / "corpus" / "redpajama", tmp_path / "corpus" / "redpajama")
    assert build_bundled.main(["--assets", str(tmp_path), "--skip-extract", "--workers", "2"]) == 0
    rebuilt = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert len(rebuilt) > 40
    for rel in rebuilt:
        assert (tmp_path / rel).read_bytes() == (assets / rel).read_bytes(), rel
