"""Tokenizer wrapper: both backends, bundled files, special ids, fingerprints, training."""
from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest

from lightning_redllm.assets import asset_path
from lightning_redllm.tokenizer import (
    BUNDLED_TOKENIZERS,
    Tokenizer,
    load_tokenizer,
    train_tokenizer,
)

TEXT = "In the beginning God created the heaven and the earth."
TEXTS = [
    TEXT,
    "And the earth was without form, and void; and darkness was upon the face of the deep.",
    "hacker: n. A person who enjoys exploring the details of programmable systems.",
    'The "assert" statement: Assert statements are a convenient way to insert debugging assertions.',
] * 20


@pytest.fixture(scope="module")
def bpe():
    return load_tokenizer("bundled-bpe-4k")


@pytest.fixture(scope="module")
def mistral():
    return load_tokenizer("mistral-v1-32k")


def test_bundled_bpe_special_ids(bpe):
    assert bpe.kind == "hf" and bpe.name == "bundled-bpe-4k"
    assert bpe.vocab_size == 4096
    assert (bpe.pad_id, bpe.unk_id, bpe.bos_id, bpe.eos_id) == (0, 1, 2, 3)
    assert [bpe.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]


def test_bundled_mistral_special_ids(mistral):
    assert mistral.kind == "sentencepiece"
    assert mistral.vocab_size == 32000
    assert (mistral.unk_id, mistral.bos_id, mistral.eos_id) == (0, 1, 2)
    assert mistral.pad_id == mistral.unk_id  # no pad piece: documented fallback


@pytest.mark.parametrize("name", sorted(BUNDLED_TOKENIZERS))
def test_round_trip_and_no_specials_added(name):
    tok = load_tokenizer(name)
    ids = tok.encode(TEXT)
    assert ids and tok.bos_id not in ids and tok.eos_id not in ids
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == TEXT
    # specials are skipped; numpy input works
    assert tok.decode(np.array([tok.bos_id, *ids, tok.eos_id, tok.pad_id])) == TEXT
    assert tok.encode_batch([TEXT, "x y"]) == [ids, tok.encode("x y")]
    assert tok.encode_batch([]) == []


def test_bpe_exact_round_trip_of_odd_text(bpe):
    text = "  leading spaces, tabs\tand unicode: héllo ☃ 𝔘 — \n\nnew paragraph\r\n"
    assert bpe.decode(bpe.encode(text)) == text


def test_decode_rejects_out_of_range(bpe):
    with pytest.raises(ValueError, match="out of range"):
        bpe.decode([5, 4096])


@pytest.mark.parametrize("name", sorted(BUNDLED_TOKENIZERS))
def test_fingerprint_is_sha256_of_file(name):
    tok = load_tokenizer(name)
    path = asset_path(*BUNDLED_TOKENIZERS[name])
    assert tok.path == path.resolve()
    assert tok.fingerprint == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_check_fits(bpe, mistral):
    bpe.check_fits(4096)
    bpe.check_fits(32768, what="tiny model")
    with pytest.raises(ValueError) as e:
        mistral.check_fits(4096, what="tiny model")
    msg = str(e.value)
    assert "32000" in msg and "4096" in msg and "tiny model" in msg and str(mistral.path) in msg


def test_load_by_path_and_errors(tmp_path, bpe):
    assert load_tokenizer(str(bpe.path)).fingerprint == bpe.fingerprint
    assert Tokenizer.from_file(bpe.path).name == "bundled-bpe-4k"  # bundled name kept
    with pytest.raises(FileNotFoundError, match="bundled-bpe-4k"):
        load_tokenizer("no-such-tokenizer")
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_file(tmp_path / "missing.json")
    junk = tmp_path / "vocab.txt"
    junk.write_text("hello world\n")
    with pytest.raises(ValueError, match="vocab.txt"):
        Tokenizer.from_file(junk)
    bad_json = tmp_path / "tokenizer.json"
    bad_json.write_text('{"not": "a tokenizer"}')
    with pytest.raises(ValueError, match="tokenizer.json"):
        Tokenizer.from_file(bad_json)
    bad_model = tmp_path / "broken.model"
    bad_model.write_bytes(b"\x0a\x05garbage")
    with pytest.raises(ValueError, match="broken.model"):
        Tokenizer.from_file(bad_model)


def test_pickles_by_path(bpe):
    clone = pickle.loads(pickle.dumps(bpe))
    assert clone.fingerprint == bpe.fingerprint and clone.name == bpe.name
    assert clone.encode(TEXT) == bpe.encode(TEXT)


def test_train_tiny_bpe_deterministic(tmp_path):
    a = train_tokenizer(TEXTS, 300, kind="bpe", output=tmp_path / "a.json")
    b = train_tokenizer(iter(TEXTS), 300, kind="bpe", output=tmp_path / "b.json")
    assert a.vocab_size == 300
    assert (a.pad_id, a.unk_id, a.bos_id, a.eos_id) == (0, 1, 2, 3)
    assert a.fingerprint == b.fingerprint
    assert a.decode(a.encode(TEXT)) == TEXT
    assert len(a.encode(TEXT)) < len(TEXT.encode())  # merges were learned


def test_train_from_files_and_unigram(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS), encoding="utf-8")
    tok = train_tokenizer([corpus], 120, kind="unigram", output=tmp_path / "u" / "tokenizer.json")
    assert tok.path == (tmp_path / "u" / "tokenizer.json").resolve()
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert tok.vocab_size <= 120
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert load_tokenizer(tmp_path / "u").fingerprint == tok.fingerprint  # a directory works too
    with pytest.raises(ValueError, match="kind"):
        train_tokenizer(TEXTS, 300, kind="wordpiece", output=tmp_path / "w.json")


def test_pad_falls_back_to_unk_in_hf_json(tmp_path, bpe):
    data = json.loads(bpe.path.read_text(encoding="utf-8"))
    # Drop <pad> from the added tokens and the vocab, as in tokenizers shipped without one.
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<pad>"]
    data["model"]["vocab"].pop("<pad>")
    path = tmp_path / "nopad.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    tok = Tokenizer.from_file(path)
    assert tok.pad_id == tok.unk_id == 1
    assert tok.vocab_size == 4096
