"""The shard format: webdataset ``.tar`` files plus a ``manifest.json`` (``lightning_redllm.data.manifest``).

One sample per document, ``__key__ = f"{source}-{doc_index:09d}"`` (no dots). Members:

* pretrain: ``<key>.tokens.npy`` (1-D uint16, or uint32 when vocab_size > 65535; the document's
  tokens followed by the eos id) and ``<key>.source.txt``;
* instruct: ``<key>.inputs.npy``, ``<key>.targets.npy`` (no eos, not truncated) and ``<key>.task.txt``.

Shards are named ``shard-{index:06d}.tar``. Tar members are written with fixed metadata (mtime 0,
uid/gid 0, mode 0644, ustar) so the same samples always give the same bytes.

Public helpers: :class:`ShardWriter` (atomic: ``*.tar.tmp`` then ``os.replace``),
:func:`shard_paths`, :func:`brace_pattern`, :func:`iter_shard`. The manifest (format name, schema,
reading, validating, writing) has one owner, ``lightning_redllm.data.manifest``; its names are
re-exported here for the converters.
"""
from __future__ import annotations

import hashlib
import io
import os
import pathlib
import re
import tarfile
from collections.abc import Iterator, Mapping

import numpy as np

from lightning_redllm.data.manifest import (  # re-exported for the converters
    FORMAT, KINDS, MANIFEST_NAME, new_manifest, read_manifest, write_json_atomic, write_manifest)

__all__ = ["FORMAT", "KINDS", "MANIFEST_NAME", "SHARD_RE", "ShardWriter", "brace_pattern", "dtype_for_vocab",
           "iter_shard", "key_prefix", "new_manifest", "npy_bytes", "read_manifest", "sample_key", "sha256_file",
           "shard_name", "shard_paths", "write_json_atomic", "write_manifest"]

SHARD_RE = re.compile(r"^shard-(\d{6})\.tar$")
_KEY_PART_RE = re.compile(r"[^A-Za-z0-9_-]+")


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def brace_pattern(num_shards: int, directory: str | os.PathLike | None = None) -> str:
    """``shard-{000000..000011}.tar`` (the webdataset brace convention) for ``num_shards`` shards."""
    if num_shards < 1:
        raise ValueError("brace_pattern needs at least one shard")
    name = shard_name(0) if num_shards == 1 else f"shard-{{{0:06d}..{num_shards - 1:06d}}}.tar"
    return os.path.join(os.fspath(directory), name) if directory is not None else name


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


def key_prefix(label: str) -> str:
    """A source / task name made safe for a webdataset key: no dots, slashes or spaces, <= 64 chars."""
    return _KEY_PART_RE.sub("_", label).strip("_")[:64] or "unknown"


def sample_key(label: str, doc_index: int) -> str:
    return f"{key_prefix(label)}-{doc_index:09d}"


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


class ShardWriter:
    """Write one ``.tar`` shard atomically: samples go to ``<path>.tmp``; :meth:`close` renames it.

    >>> with ShardWriter(out / "shard-000000.tar") as w:
    ...     w.write("book-000000000", {"tokens.npy": tokens, "source.txt": "book"})

    Member values may be ``bytes``, ``str`` (utf-8) or a numpy array (stored with ``np.save``).
    Leaving the ``with`` block through an exception removes the temporary file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = pathlib.Path(path)
        self.tmp_path = self.path.with_name(self.path.name + ".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.tmp_path, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self.count = 0
        self._closed = False

    def write(self, key: str, members: Mapping[str, bytes | str | np.ndarray]) -> None:
        if "." in key or "/" in key or not key:
            raise ValueError(f"invalid sample key {key!r}: must be non-empty, without '.' or '/'")
        for suffix, value in members.items():
            if isinstance(value, np.ndarray):
                value = npy_bytes(value)
            elif isinstance(value, str):
                value = value.encode("utf-8")
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size = len(value)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(value))
        self.count += 1

    def close(self) -> pathlib.Path:
        """Finish the tar and move it into place; returns the final path."""
        if not self._closed:
            self._tar.close()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self.tmp_path, self.path)
            self._closed = True
        return self.path

    def abort(self) -> None:
        """Drop the temporary file; the final path is left untouched."""
        if not self._closed:
            self._closed = True
            try:
                self._tar.close()
            finally:
                self._file.close()
                if self.tmp_path.exists():
                    self.tmp_path.unlink()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def shard_paths(directory: str | os.PathLike, manifest: dict | None = None) -> list[pathlib.Path]:
    """Paths of the shards listed in a directory's manifest, in order."""
    directory = pathlib.Path(directory)
    manifest = manifest if manifest is not None else read_manifest(directory)
    return [directory / s["name"] for s in manifest["shards"]]


def iter_shard(path: str | os.PathLike, decode: bool = True) -> Iterator[tuple[str, dict]]:
    """``(key, {suffix: value})`` per sample of a shard, in file order.

    With ``decode``, ``.npy`` members become numpy arrays and ``.txt`` members strings.
    """
    with tarfile.open(path, mode="r") as tar:
        key, sample = None, {}
        for member in tar:
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            k, _, suffix = base.partition(".")
            data = tar.extractfile(member).read()
            if decode and suffix.endswith(".npy"):
                data = np.load(io.BytesIO(data), allow_pickle=False)
            elif decode and suffix.endswith(".txt"):
                data = data.decode("utf-8")
            if k != key and key is not None:
                yield key, sample
                sample = {}
            key = k
            sample[suffix] = data
        if key is not None:
            yield key, sample
