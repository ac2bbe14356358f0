"""Silent or misleading data and input cases, each through the entry point a user runs:

* ``fit`` on shards with an out-of-vocabulary id or a garbage ``.npy`` member -> one error line naming
  the shard file and the sample key (and the id and vocab size);
* ``fit`` with ``train_shards`` and no validation shards -> no "Total length of `list`" warning;
* the RedPajama converter on an empty file, a ``"text": null`` line, and its final progress bar;
* ``generate`` past the trained context (warned, with progress while it runs) and with a missing
  checkpoint.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from fault_helpers import SMALL, cli, cli_env, fit_config, repack_shards, tiny_module

from lightning_redllm.data import BadShardError, PretrainDataModule
from lightning_redllm.data.shards import decode_npy
from lightning_redllm.generate import ContextLengthWarning, SamplingOptions, context_overflow, generate

TOK = "bundled-bpe-4k"
PROG = "python -m lightning_redllm generate"


def _digest(*paths: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _rewrite_tokens(path: Path, key_index: int, fn) -> str:
    """Replace the ``tokens.npy`` bytes of the ``key_index``-th sample of a shard; returns its key."""
    out = io.BytesIO()
    keys: list[str] = []
    with tarfile.open(path) as src, tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            key = m.name.split(".", 1)[0]
            if key not in keys:
                keys.append(key)
            if m.name.endswith(".tokens.npy") and len(keys) - 1 == key_index:
                data = fn(data)
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    path.write_bytes(out.getvalue())
    return keys[key_index]


def _fit(tmp_path: Path, shards: Path, *extra: str, **init_args) -> subprocess.CompletedProcess:
    data = {"class_path": "lightning_redllm.data.PretrainDataModule",
            "init_args": {"train_shards": str(shards), "seq_len": 64, "batch_size": 4, "num_workers": 0,
                          "shuffle_buffer": 0, **init_args}}
    cfg = fit_config(tmp_path / "run", steps=2, workers=0, data=data)
    return cli(["fit", "--config", str(cfg), *extra], cwd=tmp_path)


def _one_error(stderr: str) -> str:
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return errors[0]


@pytest.fixture
def shards(tmp_path) -> tuple[Path, list[Path]]:
    d = tmp_path / "shards"
    return d, repack_shards(d, docs_per_shard=2, n_shards=2)


# ------------------------------------------------------------------------------------------------
# shards read by fit


def test_out_of_vocab_id_names_shard_key_id_and_vocab(tmp_path, shards):
    """Shards without a manifest carry no vocab size: the model's embedding size is the limit, and the
    error must name the shard, not only "token id outside the model vocabulary"."""
    d, paths = shards
    (d / "manifest.json").unlink()

    def oov(data: bytes) -> bytes:
        arr = np.load(io.BytesIO(data)).copy()
        arr[3] = 9999
        buf = io.BytesIO()
        np.save(buf, arr)
        return buf.getvalue()

    keys = {str(p): _rewrite_tokens(p, 0, oov) for p in paths}  # whichever shard is read first
    before = _digest(*paths)
    r = _fit(tmp_path, d, bos_id=2, eos_id=3, pad_id=0)
    assert r.returncode == 1
    line = _one_error(r.stderr)
    assert any(f"{path!r}: sample {key!r}" in line for path, key in keys.items()), line
    assert "9999" in line and "4096" in line, line
    assert _digest(*paths) == before


def test_garbage_npy_member_is_not_called_pickled(tmp_path, shards):
    d, paths = shards
    keys = {str(p): _rewrite_tokens(p, 0, lambda data: np.random.default_rng(0).bytes(len(data))) for p in paths}
    before = _digest(*paths)
    r = _fit(tmp_path, d)
    assert r.returncode == 1
    line = _one_error(r.stderr)
    assert "is not a valid .npy array" in line and "pickled" not in line, line
    assert any(f"{path!r}, sample {key!r}: tokens.npy member" in line for path, key in keys.items()), line
    assert _digest(*paths) == before
    # "pickled" is kept for what really is one: an object array
    buf = io.BytesIO()
    np.save(buf, np.array([1, "x"], dtype=object), allow_pickle=True)
    with pytest.raises(BadShardError, match=r"^shard 's\.tar', sample 'k': tokens\.npy member holds pickled"):
        decode_npy(buf.getvalue(), "shard 's.tar', sample 'k': tokens.npy member")


def test_fit_without_val_shards_has_no_zero_length_warning(tmp_path, shards):
    d, paths = shards
    r = _fit(tmp_path, d, "--trainer.limit_val_batches", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "across ranks is zero" not in r.stderr, r.stderr[-3000:]
    assert (tmp_path / "run/ckpt/last.ckpt").exists()
    # validation still runs when there are val shards; validate without them is an error, not a no-op
    trainer = L.Trainer(accelerator="cpu", limit_val_batches=2, logger=False)
    with_val = PretrainDataModule(train_shards=str(d), val_shards=str(paths[0]), num_workers=0)
    with_val.trainer = trainer
    with_val.setup("fit")
    assert trainer.limit_val_batches == 2
    without = PretrainDataModule(train_shards=str(d), num_workers=0)
    without.trainer = trainer
    with pytest.raises(ValueError, match="val_shards"):
        without.setup("validate")


# ------------------------------------------------------------------------------------------------
# the RedPajama converter


def _convert(tmp_path: Path, out: Path, *inputs: Path, progress: bool = False, extra=()) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "data_pipelines.redpajama", *map(str, inputs), "--source", "web", "-o", str(out),
           "--tokenizer", TOK, "--workers", "1", *extra]
    if not progress:
        cmd.append("--no-progress")
    return subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120)


def _docs(path: Path, texts: list) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_empty_jsonl_warns_and_no_document_at_all_fails(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    good = _docs(tmp_path / "good.jsonl", ["In the beginning.", "And the earth was without form."])
    r = _convert(tmp_path, tmp_path / "a", empty, good)
    assert r.returncode == 0, r.stderr
    warned = [ln for ln in r.stderr.splitlines() if "WARNING" in ln]
    assert len(warned) == 1 and str(empty) in warned[0] and "empty" in warned[0], r.stderr
    assert json.loads((tmp_path / "a/manifest.json").read_text())["totals"]["documents"] == 2
    # only empty input: refused before the output directory is touched, so --overwrite loses nothing
    before = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    r = _convert(tmp_path, tmp_path / "a", empty, extra=["--overwrite"])
    assert r.returncode == 2
    assert str(empty) in _one_error(r.stderr)
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == before
    # records, but none usable (blank lines, bad lines): no manifest, one error line
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": ""}\n')
    r = _convert(tmp_path, tmp_path / "b", blank, bad)
    assert r.returncode == 2
    line = _one_error(r.stderr)
    assert "no document converted" in line and str(blank) in line, line
    assert str(blank) in r.stderr.split("error:")[0] and str(bad) in r.stderr.split("error:")[0]
    assert not (tmp_path / "b/manifest.json").exists()
    assert empty.exists() and blank.read_text() == "\n\n" and bad.exists()


def test_null_text_is_reported_as_null(tmp_path):
    src = tmp_path / "rp.jsonl"
    src.write_text('{"text": "first"}\n{"text": null, "meta": {}}\n{"meta": {}}\n')
    r = _convert(tmp_path, tmp_path / "out", src)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "rp.jsonl:" in ln]
    assert len(lines) == 2, r.stderr
    assert lines[0].endswith(f"{src}:2: empty_text: 'text' is null"), lines
    assert lines[1].endswith(f"{src}:3: empty_text: missing 'text'"), lines
    m = json.loads((tmp_path / "out/manifest.json").read_text())
    assert f"{src}:2: empty_text: 'text' is null" in m["errors"]["examples"]


def test_progress_bar_ends_with_the_final_counts(tmp_path):
    src = _docs(tmp_path / "rp.jsonl", ["one document", "another one", "and a third"])
    r = _convert(tmp_path, tmp_path / "out", src, progress=True)
    assert r.returncode == 0, r.stderr
    renders = [s for s in r.stderr.replace("\r", "\n").splitlines() if "pretrain -> out" in s]
    assert renders and "docs=3" in renders[-1] and "shards=1" in renders[-1], renders[-3:]


# ------------------------------------------------------------------------------------------------
# generate


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny random RedLLM whose eos logit is always 0, so greedy generation never stops early."""
    m = tiny_module(overrides=SMALL)
    m.configure_model()
    with torch.no_grad():
        m.model.embed.weight[m.tokenizer.eos_id] = 0.0
    path = tmp_path_factory.mktemp("gen") / "tiny.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in m.model.state_dict().items()},
                "model_config": m.config.to_dict(), "hyper_parameters": {"tokenizer": TOK}}, path)
    return path


def test_generate_past_the_trained_context_warns_and_shows_progress(tmp_path, ckpt):
    prompt = "In the beginning God created the heaven and the earth. " * 60  # ~660 tokens, trained: 512
    before = _digest(ckpt)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightning_redllm", "generate", "--ckpt", str(ckpt), "--prompt", prompt,
         "--max_new_tokens", "100000", "--progress_every", "32", "--device", "cpu"],
        cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 120
        while not any("new tokens" in ln for ln in lines) and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
        running = proc.poll() is None  # the progress line came while it was still generating
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    ours = [ln for ln in lines if ln.startswith(PROG)]
    assert running and len(ours) >= 2, lines
    warning, progress = ours[0], ours[1]
    assert warning.startswith(f"{PROG}: warning: ") and "100000" in warning and "512" in warning, warning
    assert re.fullmatch(rf"{re.escape(PROG)}: 32/100000 new tokens \([\d.]+ tok/s\)", progress), progress
    assert _digest(ckpt) == before
    # the API warns too, and says nothing within the trained context
    m = tiny_module(overrides=SMALL)
    m.configure_model()
    with pytest.warns(ContextLengthWarning, match=r"\(600 tokens\) \+ max_new_tokens 2 = 602 tokens .* 512"):
        generate(m.model, [[5] * 600], bos_id=2, eos_id=3, options=SamplingOptions(max_new_tokens=2))
    assert context_overflow(m.config, [500], 12) is None


def test_generate_missing_checkpoint_says_checkpoint_not_found(tmp_path):
    missing = tmp_path / "missing.ckpt"
    r = cli(["generate", "--ckpt", str(missing), "--prompt", "hello"], cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == f"{PROG}: error: checkpoint not found: {missing}", r.stderr
    assert not missing.exists()
