"""Pretokenized webdataset shards: discovery, manifests and sample reading.

Shard format (written by ``data_pipelines``): webdataset ``.tar`` files named
``shard-{index:06d}.tar`` holding one sample per document, ``__key__ = f"{source}-{doc:09d}"``.

* pretrain: ``<key>.tokens.npy`` (1-D uint16/uint32, the document WITH eos appended), ``<key>.source.txt``
* instruct: ``<key>.inputs.npy``, ``<key>.targets.npy`` (1-D, no eos, untruncated), ``<key>.task.txt``

A ``manifest.json`` beside the shards (format and schema: ``data.manifest``) names the tokenizer
(fingerprint, vocab size, special ids), the kind and the per-shard document counts. It may be absent
for user shards given as URLs; then the token ids come from the DataModule arguments.

Patterns accepted by :func:`expand_shards`: a local file, a directory (all ``*.tar`` in it), a glob
(``/data/*.tar``), a brace pattern (``/data/shard-{000000..000123}.tar``), a list of any of these,
and remote ``pipe:``/``http(s)://``/... URLs (brace-expanded, opened with ``webdataset.gopen``).
"""
from __future__ import annotations

import glob
import io
import logging
import os
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from webdataset.gopen import gopen
from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from .manifest import MANIFEST_NAME, read_manifest

log = logging.getLogger(__name__)

BAD_SHARD_POLICIES = ("raise", "skip")

_REMOTE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")  # pipe:, http:, https:, s3:, gs:, ...
_KEY_RE = re.compile(r"^(?P<source>.+)-(?P<index>\d+)$")
# np.save's version-1.0 header, e.g. b"{'descr': '<u2', 'fortran_order': False, 'shape': (17,), }"
_NPY_HEADER_RE = re.compile(rb"^\{'descr': '([<|>][a-z]\d+)', 'fortran_order': False, 'shape': \((\d+),\), \}")
_NPY_MAGIC = b"\x93NUMPY"
_NPY_FAST_DTYPES = {b"<u2": np.uint16, b"<u4": np.uint32, b"<i4": np.int32, b"<i8": np.int64, b"|u1": np.uint8}


class BadShardError(ValueError):
    """A shard could not be opened or read to the end (missing, corrupt, truncated, wrong content)."""


# ----------------------------------------------------------------------------------------------
# Pattern expansion


def _is_remote(url: str) -> bool:
    # a one-letter "scheme" is a Windows drive, not a URL
    return bool(_REMOTE_RE.match(url)) and not re.match(r"^[A-Za-z]:[\\/]", url) and not url.startswith("file:")


def _local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url[len("file:"):] if url.startswith("file:") else url


def _expand_one(pattern: str, skipped: list[str] | None = None) -> list[str]:
    if _is_remote(pattern):
        return list(expand_urls(pattern))
    found: list[str] = []
    missing: list[str] = []
    for path in expand_urls(os.path.expanduser(_local_path(pattern))):
        if os.path.isdir(path):
            found.extend(sorted(glob.glob(os.path.join(glob.escape(path), "*.tar"))))
        elif glob.has_magic(path):
            found.extend(p for p in sorted(glob.glob(path)) if os.path.isfile(p))
        elif os.path.isfile(path):
            found.append(path)
        else:
            missing.append(path)
    if missing and (skipped is None or not found):
        raise ValueError(
            f"shard pattern {pattern!r}: {len(missing)} expanded path(s) do not exist, e.g. {missing[0]!r}"
        )
    if missing:
        skipped.extend(missing)
    return found


def expand_shards(patterns: str | os.PathLike | Sequence[str | os.PathLike],
                  skipped: list[str] | None = None) -> list[str]:
    """Expand shard patterns (paths, directories, globs, brace patterns, URLs) into a list of shard URLs.

    ``skipped``: when given, explicitly named shards that do not exist are appended to it instead of
    raising (a pattern that matches nothing at all still raises).

    Raises:
        ValueError: a pattern matches no shard or names a missing one (the message names the
            pattern and the path), or a shard is listed twice.
    """
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    if not patterns:
        raise ValueError("no shard patterns given (empty list)")
    urls: list[str] = []
    for pattern in patterns:
        pattern = os.fspath(pattern)
        found = _expand_one(pattern, skipped)
        if not found:
            raise ValueError(f"no shard matches the pattern {pattern!r}")
        urls.extend(found)
    seen: set[str] = set()
    for url in urls:
        if url in seen:
            raise ValueError(f"shard {url!r} is listed more than once in {list(map(os.fspath, patterns))!r}")
        seen.add(url)
    return urls


# ----------------------------------------------------------------------------------------------
# Manifests


@dataclass(frozen=True)
class ShardManifest:
    """The ``manifest.json`` written beside a directory of shards."""

    path: str
    kind: str  # "pretrain" | "instruct"
    tokenizer: dict[str, Any]
    dtype: str
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)  # shard file name -> entry
    complete: bool = True

    @property
    def fingerprint(self) -> str | None:
        return self.tokenizer.get("fingerprint")

    @classmethod
    def load(cls, path: str | os.PathLike) -> ShardManifest:
        """Read and validate through the format's owner (``data.manifest``); an incomplete set loads
        (the loader warns), anything else malformed is a ``ValueError`` naming the file."""
        path = os.fspath(path)
        raw = read_manifest(path, require_complete=False)
        return cls(path=path, kind=raw["kind"], tokenizer=dict(raw["tokenizer"]), dtype=str(raw["dtype"]),
                   shards={entry["name"]: entry for entry in raw["shards"]}, complete=raw["complete"] is True)

    def entry(self, url: str) -> dict[str, Any] | None:
        return self.shards.get(os.path.basename(url))


@dataclass(frozen=True)
class ShardSet:
    """Expanded shard URLs plus what the manifests say about each (picklable; sent to loader workers)."""

    urls: list[str]
    manifest: ShardManifest | None  # the first manifest found (all must share one tokenizer)
    documents: list[int | None]  # expected document count per shard (None = unknown)
    sources: list[tuple[str, ...] | None]  # sources present in each shard (None = unknown)
    skipped: tuple[tuple[str, str], ...] = ()  # (shard, reason) left out by on_bad_shard="skip"

    @property
    def tokenizer(self) -> dict[str, Any]:
        return dict(self.manifest.tokenizer) if self.manifest is not None else {}


def open_shards(
    patterns: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    kind: str,
    expected_fingerprint: str | None = None,
    on_bad_shard: str = "raise",
) -> ShardSet:
    """Expand ``patterns`` and read the manifests of the local shard directories.

    ``on_bad_shard="skip"`` leaves out (with a warning, listed in ``ShardSet.skipped``) explicitly
    named shards that do not exist and shards whose manifest names another tokenizer than
    ``expected_fingerprint`` (or, without it, than the manifest covering most shards).

    Raises:
        ValueError: no shard matches a pattern; a manifest is of another ``kind``; with "raise": a
            named shard is missing, two manifests name different tokenizers, or a manifest's
            tokenizer fingerprint differs from ``expected_fingerprint`` (the messages name a shard).
    """
    if on_bad_shard not in BAD_SHARD_POLICIES:
        raise ValueError(f"on_bad_shard={on_bad_shard!r}; expected one of {BAD_SHARD_POLICIES}")
    missing: list[str] | None = [] if on_bad_shard == "skip" else None
    urls = expand_shards(patterns, skipped=missing)
    skipped: list[tuple[str, str]] = [(url, "missing") for url in missing or []]
    for url, _ in skipped:
        log.warning("skipping missing shard %s (on_bad_shard='skip')", url)
    manifests: dict[str, ShardManifest | None] = {}
    per_shard: list[ShardManifest | None] = []
    for url in urls:
        if _is_remote(url):
            per_shard.append(None)
            continue
        directory = os.path.dirname(os.path.abspath(_local_path(url)))
        if directory not in manifests:
            path = os.path.join(directory, MANIFEST_NAME)
            manifests[directory] = ShardManifest.load(path) if os.path.isfile(path) else None
        per_shard.append(manifests[directory])
    found = [m for m in manifests.values() if m is not None]
    for m in found:
        if m.kind != kind:
            raise ValueError(f"shard manifest {m.path!r} describes {m.kind!r} shards, but {kind!r} shards are needed")
        if not m.complete:
            log.warning("shard manifest %s says the shard set is incomplete (complete: false)", m.path)
    reference = expected_fingerprint
    if reference is None and found:
        counts: dict[str | None, int] = {}
        for m in per_shard:
            if m is not None:
                counts[m.fingerprint] = counts.get(m.fingerprint, 0) + 1
        reference = max(counts, key=lambda fp: counts[fp])  # first-seen wins a tie
    foreign = [(url, m) for url, m in zip(urls, per_shard) if m is not None and m.fingerprint != reference]
    if foreign and on_bad_shard == "raise":
        url, m = foreign[0]
        where = f"shard {url!r}{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}"
        if expected_fingerprint is not None:
            head = (f"tokenizer fingerprint mismatch: expected {expected_fingerprint!r} but shard manifest "
                    f"{m.path!r} has {m.fingerprint!r}")
        else:
            ref = next(x for x in found if x.fingerprint == reference)
            head = (f"shards use different tokenizers: {m.fingerprint!r} in {m.path!r} "
                    f"vs {reference!r} in {ref.path!r}")
        raise ValueError(f"{head} ({where}); remove them or set on_bad_shard='skip'")
    if foreign:
        bad = {url for url, _ in foreign}
        for url, m in foreign:
            log.warning("skipping shard %s tokenized with another tokenizer (%s in %s; expected %s)",
                        url, m.fingerprint, m.path, reference)
        skipped.extend((url, "tokenizer") for url, _ in foreign)
        keep = [i for i, url in enumerate(urls) if url not in bad]
        if not keep:
            raise ValueError(f"every shard of {patterns!r} was tokenized with another tokenizer than {reference!r}")
        urls = [urls[i] for i in keep]
        per_shard = [per_shard[i] for i in keep]
        found = [m for m in found if m.fingerprint == reference]
    if expected_fingerprint is not None and not found:
        log.warning("no shard manifest found for %s; cannot verify tokenizer fingerprint %s", urls[0], expected_fingerprint)
    documents: list[int | None] = []
    sources: list[tuple[str, ...] | None] = []
    for url, m in zip(urls, per_shard):
        entry = m.entry(url) if m is not None else None
        documents.append(int(entry["documents"]) if entry and "documents" in entry else None)
        srcs = entry.get("sources") if entry else None
        sources.append(tuple(sorted(srcs)) if isinstance(srcs, (dict, list)) else None)
    return ShardSet(urls=urls, manifest=found[0] if found else None, documents=documents, sources=sources,
                    skipped=tuple(skipped))


# ----------------------------------------------------------------------------------------------
# Reading


def source_of(key: str) -> str:
    """The source name encoded in a sample key ``f"{source}-{doc_index:09d}"`` ("unknown" otherwise)."""
    m = _KEY_RE.match(key)
    return m.group("source") if m else "unknown"


def decode_npy(data: bytes, where: str = "") -> np.ndarray:
    """Decode ``np.save`` bytes of a 1-D array without copying (fast path for the common v1.0 header).

    ``where`` names the member in messages (e.g. ``shard '/d/shard-000001.tar', sample 'book-000000007':
    tokens.npy member``).

    Raises:
        BadShardError: the bytes are not a ``.npy`` array, hold pickled objects, or are not a 1-D
            integer array.
    """
    if data[:8] == b"\x93NUMPY\x01\x00" and len(data) >= 10:
        end = 10 + int.from_bytes(data[8:10], "little")
        m = _NPY_HEADER_RE.match(data[10:end])
        if m is not None and m.group(1) in _NPY_FAST_DTYPES:
            dtype = _NPY_FAST_DTYPES[m.group(1)]
            count = int(m.group(2))
            if len(data) - end == count * np.dtype(dtype).itemsize:
                return np.frombuffer(data, dtype=dtype, count=count, offset=end)
    if not data.startswith(_NPY_MAGIC):
        # np.load hands anything without the magic to pickle, whose refusal ("pickled (object)
        # data") would blame the wrong thing for plain garbage
        raise BadShardError(f"{where} is not a valid .npy array ({len(data)} bytes starting {data[:8]!r}, "
                            f"not the .npy magic {_NPY_MAGIC!r})")
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exn:  # numpy raises ValueError/EOFError/OSError for broken payloads
        dtype = _npy_dtype(data)
        if dtype is not None and dtype.hasobject:
            raise BadShardError(f"{where} holds pickled (object) data, not token ids; it is not unpickled") from exn
        raise BadShardError(f"{where} is not a valid .npy array: {exn}") from exn
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise BadShardError(f"{where}: expected a 1-D integer token array, got {arr.dtype} {arr.shape}")
    return arr


def _npy_dtype(data: bytes) -> np.dtype | None:
    """The dtype an ``.npy`` header declares, or None when the header itself is unreadable."""
    fp = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(fp)[2]
        return np.lib.format.read_array_header_2_0(fp)[2]
    except Exception:  # a corrupt header raises ValueError / SyntaxError / EOFError
        return None


class _Selector:
    """``select_files`` callback for webdataset's tar iterator: counts samples, skips unwanted ones unread."""

    def __init__(self, exts: frozenset[str], start: int, wanted: Callable[[int, str], bool] | None):
        self.exts, self.start, self.wanted = exts, start, wanted
        self.key: str | None = None
        self.index = -1  # index of the sample the last member belonged to
        self.keep = False

    def __call__(self, fname: str) -> bool:
        key, ext = base_plus_ext(fname)
        if key is None:
            return False
        if key != self.key:
            self.key, self.index = key, self.index + 1
            self.keep = self.index >= self.start and (self.wanted is None or self.wanted(self.index, key))
        return self.keep and ext in self.exts


_COMPRESSED_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")
_TAR_REGULAR = (b"0", b"\0", b"7")


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # base-256 (GNU) for sizes >= 8 GiB
        return int.from_bytes(field[1:], "big")
    field = field.split(b"\0", 1)[0].strip()
    return int(field, 8) if field else 0


def _read_exact(stream, n: int) -> bytes:
    data = stream.read(n)
    while len(data) < n:  # pipes and sockets may return short reads
        more = stream.read(n - len(data))
        if not more:
            raise EOFError(f"unexpected end of data: needed {n} bytes, got {len(data)}")
        data += more
    return data


def iter_tar_fast(stream, select: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """Minimal streaming reader of uncompressed ustar/pax/GNU tar: ``(name, data)`` of selected files.

    Python's ``tarfile`` (under webdataset's ``tar_file_iterator``) spends ~100 us per header; at
    two members per document that caps a worker near 1M tokens/s. This parses headers with slicing,
    verifies checksums, and skips unselected members without reading them when the stream seeks.
    Same contract as webdataset: ``__meta__`` entries are skipped, names are the member paths.
    """
    seekable = getattr(stream, "seekable", lambda: False)()
    pax: dict[bytes, bytes] = {}
    longname: bytes | None = None
    while True:
        header = stream.read(512)
        if len(header) == 0:
            return  # EOF on a member boundary without end-of-archive marker: like tarfile, accept
        if len(header) < 512:
            header += _read_exact(stream, 512 - len(header))
        if header.count(0) == 512:
            return  # end-of-archive marker
        chksum = _octal(header[148:156])
        if chksum != sum(header[:148]) + 256 + sum(header[156:]):
            raise tarfile.ReadError(f"bad tar header checksum ({chksum})")
        kind = header[156:157]
        size = int(pax[b"size"]) if b"size" in pax else _octal(header[124:136])
        padded = (size + 511) & ~511
        if kind in (b"x", b"g", b"L"):
            data = _read_exact(stream, padded)[:size]
            if kind == b"x":
                pax = _parse_pax(data)
            elif kind == b"L":
                longname = data.rstrip(b"\0")
            continue
        if longname is not None:
            raw = longname
        elif b"path" in pax:
            raw = pax[b"path"]
        else:
            raw = header[:100].split(b"\0", 1)[0]
            if header[257:262] == b"ustar" and header[345] != 0:
                raw = header[345:500].split(b"\0", 1)[0] + b"/" + raw
        pax, longname = {}, None
        name = raw.decode("utf-8", "surrogateescape")
        base = name.rsplit("/", 1)[-1]
        if kind in _TAR_REGULAR and not (base.startswith("__") and base.endswith("__")) and select(name):
            yield name, _read_exact(stream, padded)[:size]
        elif padded:
            if seekable:
                stream.seek(padded, 1)
            else:
                _read_exact(stream, padded)


def _parse_pax(data: bytes) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key] = value
        pos += length
    return out


def iter_shard(
    url: str,
    exts: Sequence[str],
    *,
    start: int = 0,
    wanted: Callable[[int, str], bool] | None = None,
    expected_documents: int | None = None,
    backend: str = "auto",
) -> Iterator[tuple[int, str, dict[str, bytes]]]:
    """Yield ``(sample_index, key, {ext: bytes})`` for the samples of one shard.

    Samples before ``start`` and samples ``wanted(index, key)`` rejects are counted but not read.
    Only members with an extension in ``exts`` are returned; a sample lacking one of them is an error.
    ``backend``: "webdataset" (``webdataset.tariterators.tar_file_iterator``, handles compressed
    tars), "fast" (:func:`iter_tar_fast`), "auto" (fast unless the name says compressed).

    Raises:
        BadShardError: the shard cannot be opened, is corrupt or truncated, misses a member, or holds
            a different number of samples than the manifest's ``expected_documents``.
    """
    if backend == "auto":
        backend = "webdataset" if url.endswith(_COMPRESSED_SUFFIXES) else "fast"
    exts_set = frozenset(exts)
    selector = _Selector(exts_set, start, wanted)
    stream = None
    finished = False
    try:
        stream = gopen(url, "rb")
        if backend == "fast":
            members = iter_tar_fast(stream, selector)
        else:
            members = ((m["fname"], m["data"]) for m in tar_file_iterator(stream, select_files=selector))
        key: str | None = None
        index = -1
        parts: dict[str, bytes] = {}
        for fname, data in members:
            k, ext = base_plus_ext(fname)
            if k != key:
                if key is not None:
                    yield index, key, _complete(parts, exts_set, url, key)
                key, index, parts = k, selector.index, {}
            parts[ext] = data
        if key is not None:
            yield index, key, _complete(parts, exts_set, url, key)
        finished = True
        total = selector.index + 1
        if expected_documents is not None and total != expected_documents:
            raise BadShardError(f"shard {url!r} holds {total} samples but its manifest says {expected_documents}")
    except BadShardError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError) as exn:
        raise BadShardError(f"cannot read shard {url!r}: {type(exn).__name__}: {exn}") from exn
    finally:
        if stream is not None:
            try:
                stream.close()
            except Exception:  # a pipe closed early reports SIGPIPE; only a complete read must succeed
                if finished:
                    raise


def _complete(parts: dict[str, bytes], exts: frozenset[str], url: str, key: str) -> dict[str, bytes]:
    if len(parts) != len(exts):
        missing = sorted(exts - parts.keys())
        raise BadShardError(f"shard {url!r}: sample {key!r} has no {', '.join(missing)} member")
    return parts


def bundled_shards(kind: str, split: str) -> str:
    """Directory of the shards shipped with the package: ``assets/shards/{kind}/{split}``."""
    try:
        from lightning_redllm.assets import asset_path  # type: ignore[attr-defined]

        return os.fspath(asset_path("shards", kind, split))
    except (ImportError, AttributeError):
        return os.fspath(Path(__file__).resolve().parents[1] / "assets" / "shards" / kind / split)
