"""Shard discovery, manifests, tar reading and the bad-shard policies."""
import logging
import os
import shutil

import numpy as np
import pytest

from lightning_redllm.data import BadShardError, PretrainDataset, expand_shards, open_shards
from lightning_redllm.data.shards import decode_npy, iter_shard, source_of
from lightning_redllm.data.synthetic import npy_bytes, random_documents, write_pretrain_shards


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    docs = random_documents(40, sources=("web", "code"), max_len=20, seed=0)
    write_pretrain_shards(d, docs, docs_per_shard=10)
    return d, docs


def test_expand_forms(shard_dir):
    d, _ = shard_dir
    names = [f"{d}/shard-{i:06d}.tar" for i in range(4)]
    assert expand_shards(str(d)) == names
    assert expand_shards(f"{d}/*.tar") == names
    assert expand_shards(f"{d}/shard-{{000001..000002}}.tar") == names[1:3]
    assert expand_shards([names[3], names[0]]) == [names[3], names[0]]
    assert expand_shards("pipe:cat /x/{a,b}.tar") == ["pipe:cat /x/a.tar", "pipe:cat /x/b.tar"]


def test_missing_pattern_errors(shard_dir, tmp_path):
    d, _ = shard_dir
    with pytest.raises(ValueError, match="no shard matches the pattern '.*nothing-\\*.tar'"):
        expand_shards(f"{d}/nothing-*.tar")
    with pytest.raises(ValueError, match=r"\{000000\.\.000009\}.*6 expanded path.*shard-000004.tar"):
        expand_shards(f"{d}/shard-{{000000..000009}}.tar")
    with pytest.raises(ValueError, match="no shard matches"):
        expand_shards(str(tmp_path))  # an empty directory
    with pytest.raises(ValueError, match="more than once"):
        expand_shards([str(d), f"{d}/shard-000000.tar"])


def test_read_samples_and_pipe(shard_dir):
    d, docs = shard_dir
    samples = list(iter_shard(f"{d}/shard-000001.tar", ["tokens.npy"], expected_documents=10))
    assert [i for i, _, _ in samples] == list(range(10))
    assert [source_of(k) for _, k, _ in samples] == [s for s, _ in docs[10:20]]
    for (_, _, parts), (_, toks) in zip(samples, docs[10:20]):
        assert np.array_equal(decode_npy(parts["tokens.npy"]), toks)
    piped = list(iter_shard(f"pipe:cat {d}/shard-000001.tar", ["tokens.npy"], start=7))
    assert [i for i, _, _ in piped] == [7, 8, 9]
    assert source_of("common_crawl-000000012") == "common_crawl" and source_of("odd") == "unknown"


def test_fast_tar_reader_matches_webdataset(shard_dir, tmp_path):
    d, _ = shard_dir
    import tarfile

    # also a GNU-format tar with a long member name and a ustar one, written by Python's tarfile
    for fmt, name in ((tarfile.GNU_FORMAT, "gnu.tar"), (tarfile.USTAR_FORMAT, "ustar.tar")):
        with tarfile.open(tmp_path / name, "w", format=fmt) as tar:
            for key in ("a" * 120 if fmt == tarfile.GNU_FORMAT else "k1", "k2"):
                for ext, payload in (("tokens.npy", npy_bytes(np.arange(3))), ("source.txt", b"web")):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, __import__("io").BytesIO(payload))
    for url in [f"{d}/shard-000002.tar", str(tmp_path / "gnu.tar"), str(tmp_path / "ustar.tar")]:
        for start in (0, 1):
            fast = list(iter_shard(url, ["tokens.npy"], start=start, backend="fast"))
            ref = list(iter_shard(url, ["tokens.npy"], start=start, backend="webdataset"))
            assert [(i, k, p) for i, k, p in fast] == [(i, k, p) for i, k, p in ref] and fast
        piped = list(iter_shard(f"pipe:cat {url}", ["tokens.npy", "source.txt"], backend="fast"))
        assert [k for _, k, _ in piped] == [k for _, k, _ in iter_shard(url, ["tokens.npy"])]


def test_decode_npy_fast_and_fallback():
    for dtype in (np.uint16, np.uint32, np.int64):
        a = np.arange(5, dtype=dtype)
        assert np.array_equal(decode_npy(npy_bytes(a)), a)
    big_endian = np.arange(3, dtype=">u2")
    assert decode_npy(npy_bytes(big_endian)).tolist() == [0, 1, 2]
    with pytest.raises(BadShardError):
        decode_npy(b"not an npy")


def test_fingerprint_mismatch(shard_dir):
    d, _ = shard_dir
    assert open_shards(str(d), kind="pretrain", expected_fingerprint="sha256:synthetic").manifest is not None
    with pytest.raises(ValueError, match=r"expected 'sha256:other'.*manifest.json.*'sha256:synthetic'"):
        open_shards(str(d), kind="pretrain", expected_fingerprint="sha256:other")
    with pytest.raises(ValueError, match="'pretrain' shards, but 'instruct'"):
        open_shards(str(d), kind="instruct")


def _corrupt_copy(src_dir, dst_dir, *, truncate: bool):
    shutil.copytree(src_dir, dst_dir)
    bad = os.path.join(dst_dir, "shard-000001.tar")
    data = open(bad, "rb").read()
    with open(bad, "wb") as f:
        f.write(data[: len(data) // 2 + 100] if truncate else data[:2048] + b"\x07" * (len(data) - 2048))
    return bad


@pytest.mark.parametrize("truncate", [True, False])
def test_bad_shard_policies(shard_dir, tmp_path, caplog, truncate):
    d, docs = shard_dir
    bad = _corrupt_copy(d, tmp_path / "c", truncate=truncate)
    for backend in ("fast", "webdataset"):
        with pytest.raises(BadShardError, match="shard-000001.tar"):
            list(iter_shard(bad, ["tokens.npy"], backend=backend, expected_documents=10))
    kw = dict(seq_len=8, shuffle=False, max_epochs=1, rank=0, world_size=1)
    with pytest.raises(BadShardError, match="shard-000001.tar"):
        list(PretrainDataset(str(tmp_path / "c"), on_bad_shard="raise", **kw))
    it = PretrainDataset(str(tmp_path / "c"), on_bad_shard="skip", **kw).iterator()
    with caplog.at_level(logging.WARNING):
        emitted = [x["tokens"] for x in it]
    assert it.stats["bad_shards"] == 1
    assert any(bad in r.getMessage() for r in caplog.records)
    # every document of the three intact shards arrives; the bad one contributes a prefix at most
    intact = sum(len(t) for _, t in docs[:10] + docs[20:])
    got = sum(len(t) for t in emitted) + len(it.dropped)
    assert intact <= got < intact + sum(len(t) for _, t in docs[10:20])


def test_all_shards_bad_never_hangs(tmp_path):
    (tmp_path / "shard-000000.tar").write_bytes(b"\x00garbage" * 100)
    ds = PretrainDataset(str(tmp_path), seq_len=8, on_bad_shard="skip", rank=0, world_size=1)
    with pytest.raises(ValueError, match="no document in a full pass"):
        next(iter(ds))
