"""One tokenizer interface over HF ``tokenizers`` (``tokenizer.json``) and SentencePiece (``.model``).

The rest of the library only sees :class:`Tokenizer`: ``encode`` never adds BOS/EOS (the data
pipeline appends EOS as the end-of-document token itself), ``decode`` drops special tokens, and the
four special ids are always valid ids.

Special-token ids
    ``bos_id``, ``eos_id``, ``pad_id`` and ``unk_id`` are looked up by the usual piece names
    (``<s>``/``</s>``/``<pad>``/``<unk>`` and the common variants). Fallbacks, so every id is valid:

    * no pad piece (SentencePiece models such as Mistral's ship none): ``pad_id = unk_id``.
      Padding positions are masked out of the loss and attention anyway, so the id only has to
      be a valid embedding row;
    * no unk piece (byte-level BPEs never need one): ``unk_id = pad_id``, else ``eos_id``;
    * no bos piece: ``bos_id = eos_id``;
    * no eos piece: ``ValueError`` -- documents could not be separated.

Bundled tokenizers (no download): ``"mistral-v1-32k"`` (SentencePiece, 32000 pieces, bos=1, eos=2,
unk=0, pad->unk=0) and ``"bundled-bpe-4k"`` (byte-level BPE, 4096 pieces, pad=0, unk=1, bos=2, eos=3).
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]

#: Names accepted by :func:`load_tokenizer` besides paths, and the files they resolve to
#: (relative to ``lightning_redllm/assets``).
BUNDLED_TOKENIZERS = {
    "mistral-v1-32k": ("tokenizers", "mistral-v1-32k.model"),
    "bundled-bpe-4k": ("tokenizers", "bundled-bpe-4k.json"),
}

#: Special pieces used by :func:`train_tokenizer`, in id order.
TRAIN_SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>")

_BOS_NAMES = ("<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>", "[CLS]", "<BOS>")
_EOS_NAMES = ("</s>", "<eos>", "<|end_of_text|>", "<|endoftext|>", "<|im_end|>", "[SEP]", "<EOS>")
_PAD_NAMES = ("<pad>", "[PAD]", "<|pad|>", "<PAD>", "<|padding|>")
_UNK_NAMES = ("<unk>", "[UNK]", "<|unk|>", "<UNK>")


def _sha256_file(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _detect_kind(path: pathlib.Path) -> str:
    """``"hf"`` for a tokenizers JSON file, ``"sentencepiece"`` for a SentencePiece protobuf."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.lstrip()[:1] == b"{":
        return "hf"
    if path.suffix == ".model" or head[:1] == b"\n":
        # A SentencePiece ModelProto starts with field 1 (pieces), tag byte 0x0a.
        return "sentencepiece"
    raise ValueError(
        f"{path}: not a tokenizer file; expected an HF tokenizers 'tokenizer.json' or a "
        "SentencePiece '.model'"
    )


class Tokenizer:
    """A loaded tokenizer; build with :meth:`from_file` or :func:`load_tokenizer`.

    Attributes: ``path`` (resolved file), ``name`` (bundled name or file name), ``kind``
    (``"hf"`` or ``"sentencepiece"``), ``vocab_size`` (largest id + 1), ``bos_id``, ``eos_id``,
    ``pad_id``, ``unk_id`` (see the module docstring for fallbacks) and ``fingerprint``
    (``"sha256:<hex>"`` of the file bytes, recorded in shard manifests).
    Instances pickle by path, so they can be handed to DataLoader / multiprocessing workers.
    """

    def __init__(self, path: pathlib.Path, kind: str, backend, name: str | None = None):
        self.path = path
        self.kind = kind
        self.name = name or path.name
        self._backend = backend
        self.fingerprint = _sha256_file(path)
        if kind == "hf":
            self._init_hf_ids()
        else:
            self._init_sp_ids()
        self._special_ids = frozenset({self.bos_id, self.eos_id, self.pad_id, self.unk_id})

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_file(cls, path: PathLike, name: str | None = None) -> "Tokenizer":
        """Load a ``tokenizer.json`` (HF tokenizers) or SentencePiece ``.model``, told apart by content."""
        path = pathlib.Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        path = path.resolve()
        if name is None:  # a bundled file keeps its bundled name however it was reached
            name = next((n for n in BUNDLED_TOKENIZERS if bundled_tokenizer_path(n).resolve() == path), None)
        kind = _detect_kind(path)
        try:
            if kind == "hf":
                from tokenizers import Tokenizer as HFTokenizer

                backend = HFTokenizer.from_file(str(path))
            else:
                import sentencepiece

                backend = sentencepiece.SentencePieceProcessor(model_file=str(path))
        except Exception as e:  # the backends raise bare Exception / RuntimeError
            raise ValueError(f"{path}: could not load as a {kind} tokenizer: {e}") from e
        return cls(path, kind, backend, name=name)

    def _init_hf_ids(self) -> None:
        tok = self._backend
        vocab = tok.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1 if vocab else 0

        def find(names):
            for n in names:
                i = tok.token_to_id(n)
                if i is not None:
                    return i
            return None

        model_unk = getattr(tok.model, "unk_token", None)
        unk = find(_UNK_NAMES + ((model_unk,) if isinstance(model_unk, str) else ()))
        self._set_ids(find(_BOS_NAMES), find(_EOS_NAMES), find(_PAD_NAMES), unk)

    def _init_sp_ids(self) -> None:
        sp = self._backend
        self.vocab_size = sp.get_piece_size()

        def valid(i):
            return i if 0 <= i < self.vocab_size else None

        pad = valid(sp.pad_id())
        if pad is None and sp.piece_to_id("<pad>") != sp.unk_id():  # unknown pieces map to unk
            pad = sp.piece_to_id("<pad>")
        self._set_ids(valid(sp.bos_id()), valid(sp.eos_id()), pad, valid(sp.unk_id()))

    def _set_ids(self, bos, eos, pad, unk) -> None:
        if eos is None:
            raise ValueError(
                f"{self.path}: no end-of-sequence token found (looked for {', '.join(_EOS_NAMES)}); "
                "documents could not be separated"
            )
        unk = unk if unk is not None else (pad if pad is not None else eos)
        self.bos_id = bos if bos is not None else eos
        self.eos_id = eos
        self.pad_id = pad if pad is not None else unk
        self.unk_id = unk

    def __reduce__(self):
        return (_from_file_named, (str(self.path), self.name))

    def __repr__(self) -> str:
        return (
            f"Tokenizer(name={self.name!r}, kind={self.kind!r}, vocab_size={self.vocab_size}, "
            f"bos={self.bos_id}, eos={self.eos_id}, pad={self.pad_id}, unk={self.unk_id})"
        )

    # ---------------------------------------------------------------- encode / decode
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; never adds BOS or EOS."""
        if self.kind == "hf":
            return self._backend.encode(text, add_special_tokens=False).ids
        return self._backend.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` over a list (the HF backend runs it multi-threaded)."""
        texts = list(texts)
        if not texts:
            return []
        if self.kind == "hf":
            return [e.ids for e in self._backend.encode_batch(texts, add_special_tokens=False)]
        return self._backend.encode(texts)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (a list, numpy array or 1-D tensor), skipping bos/eos/pad/unk and other specials."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} out of range for {self.path} (vocab_size {self.vocab_size})")
            if i not in self._special_ids:
                out.append(i)
        if self.kind == "hf":
            return self._backend.decode(out, skip_special_tokens=True)
        return self._backend.decode(out)

    def id_to_piece(self, i: int) -> str:
        """The vocabulary piece of id ``i`` (for debugging / display)."""
        if self.kind == "hf":
            return self._backend.id_to_token(int(i))
        return self._backend.id_to_piece(int(i))

    def check_fits(self, model_vocab_size: int, what: str = "model") -> None:
        """Raise ``ValueError`` if some token id would index past a ``model_vocab_size`` embedding."""
        if self.vocab_size > model_vocab_size:
            raise ValueError(
                f"tokenizer {self.path} has vocab_size {self.vocab_size} but the {what} has "
                f"vocab_size {model_vocab_size}; token ids would index past the embedding. "
                f"Set the {what}'s vocab_size >= {self.vocab_size} or use a smaller tokenizer."
            )


def _from_file_named(path: str, name: str) -> Tokenizer:
    return Tokenizer.from_file(path, name=name)


def bundled_tokenizer_path(name: str) -> pathlib.Path:
    """File of a bundled tokenizer name (see :data:`BUNDLED_TOKENIZERS`)."""
    from lightning_redllm.assets import asset_path

    if name not in BUNDLED_TOKENIZERS:
        raise KeyError(f"unknown bundled tokenizer {name!r}; bundled: {sorted(BUNDLED_TOKENIZERS)}")
    return asset_path(*BUNDLED_TOKENIZERS[name])


def load_tokenizer(path_or_name: Union[PathLike, Tokenizer]) -> Tokenizer:
    """Load a tokenizer from a file path or a bundled name (``"mistral-v1-32k"``, ``"bundled-bpe-4k"``)."""
    if isinstance(path_or_name, Tokenizer):
        return path_or_name
    key = os.fspath(path_or_name)
    if key in BUNDLED_TOKENIZERS:
        return Tokenizer.from_file(bundled_tokenizer_path(key), name=key)
    path = pathlib.Path(key).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"tokenizer not found: {key!r} is neither a file nor a bundled name "
            f"({', '.join(sorted(BUNDLED_TOKENIZERS))})"
        )
    if path.is_dir():
        for candidate in ("tokenizer.json", "tokenizer.model"):
            if (path / candidate).is_file():
                return Tokenizer.from_file(path / candidate)
        raise ValueError(f"{path}: directory holds no tokenizer.json or tokenizer.model")
    return Tokenizer.from_file(path)


# ---------------------------------------------------------------------------- training
def _iter_training_texts(files_or_texts, texts: bool | None) -> Iterator[str]:
    """Texts from a mix of file paths (utf-8, one text per line) and strings."""
    if isinstance(files_or_texts, (str, os.PathLike)):
        files_or_texts = [files_or_texts]
    for item in files_or_texts:
        is_file = not texts and (isinstance(item, os.PathLike) or (
            texts is None and isinstance(item, str) and "\n" not in item and len(item) < 4096
            and os.path.isfile(item)
        ))
        if is_file:
            with open(item, encoding="utf-8") as f:
                yield from f
        elif isinstance(item, str):
            yield item
        else:
            raise TypeError(f"expected a file path or a str, got {type(item).__name__}")


def train_tokenizer(
    files_or_texts,
    vocab_size: int,
    kind: str = "bpe",
    output: PathLike = "tokenizer.json",
    min_frequency: int = 2,
    *,
    texts: bool | None = None,
) -> Tokenizer:
    """Train an HF tokenizers model and save it as ``output`` (a ``tokenizer.json``).

    ``files_or_texts``: file paths (``pathlib.Path`` always counts as a file; a ``str`` does when
    such a file exists; files are read line by line) and/or the texts themselves, in any iterable.
    ``texts=True`` takes every item as text (no file lookup), ``texts=False`` every item as a path.
    ``kind``: ``"bpe"`` (byte-level BPE: no unknown characters, exact decode round trip) or
    ``"unigram"`` (Metaspace pre-tokenizer, SentencePiece-style). Special pieces are
    ``<pad>``=0, ``<unk>``=1, ``<s>``=2 (bos), ``</s>``=3 (eos). BPE training is deterministic
    (same inputs, same file bytes; checked in the tests); HF's unigram trainer is not.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if kind not in ("bpe", "unigram"):
        raise ValueError(f"kind must be 'bpe' or 'unigram', got {kind!r}")
    if vocab_size <= len(TRAIN_SPECIAL_TOKENS) + (256 if kind == "bpe" else 0):
        raise ValueError(f"vocab_size {vocab_size} is too small for a {kind} tokenizer")
    specials = list(TRAIN_SPECIAL_TOKENS)
    if kind == "bpe":
        tok = HFTokenizer(models.BPE(unk_token=None, fuse_unk=False))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    else:
        tok = HFTokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>", show_progress=False
        )
    tok.train_from_iterator(_iter_training_texts(files_or_texts, texts), trainer=trainer)
    for i, piece in enumerate(specials):
        if tok.token_to_id(piece) != i:
            raise RuntimeError(f"special token {piece} got id {tok.token_to_id(piece)}, expected {i}")

    output = pathlib.Path(output).expanduser()
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=output.name + ".", suffix=".tmp", dir=output.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; the result is a shareable asset
    try:
        tok.save(tmp, pretty=True)
        # Round-trip through json so the file is byte-stable (sorted special-token maps etc.).
        with open(tmp, encoding="utf-8") as f:
            data = json.load(f)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, indent=1)
            f.write("\n")
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return Tokenizer.from_file(output)
