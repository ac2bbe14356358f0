"""Streaming line readers and deterministic writers for ``.jsonl`` and ``.jsonl.zst`` files.

Reading is byte-level and never raises on bad data: each physical line comes back as raw bytes
with its 1-based line number, and a truncated or corrupt zstd stream is reported as one final
item, so the caller can count and report it (see :mod:`data_pipelines.convert`).
"""
from __future__ import annotations

import json
import os
import pathlib
import tempfile
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import zstandard

_READ_SIZE = 1 << 20

#: Error classes counted by the converters (and keys of the manifest's ``errors``).
ERROR_KINDS = ("malformed_json", "not_utf8", "empty_text", "truncated_file")


class RawLine(NamedTuple):
    """One physical line: ``data`` without the newline, or ``data=None`` and ``error`` set when the
    compressed stream ended early (``line`` is then the number the next line would have had)."""

    line: int
    data: bytes | None
    error: str | None = None


class _Truncated(Exception):
    pass


def is_zst(path: os.PathLike | str) -> bool:
    return os.fspath(path).endswith(".zst")


def _iter_blocks(path: pathlib.Path, position: list[int] | None) -> Iterator[bytes]:
    """Decompressed byte blocks of ``path``; raises :class:`_Truncated` if a zstd frame is cut short.

    ``position[0]`` follows the (compressed) file offset read so far, for progress bars.
    """
    position = position if position is not None else [0]
    with open(path, "rb") as f:
        if not is_zst(path):
            for block in iter(lambda: f.read(_READ_SIZE), b""):
                position[0] = f.tell()
                yield block
            return
        dctx = zstandard.ZstdDecompressor()
        dobj = dctx.decompressobj()
        pending_frame = False  # bytes fed to the current frame that did not finish it yet
        offset = 0
        while True:
            chunk = f.read(_READ_SIZE)
            if not chunk:
                break
            position[0] = f.tell()
            while chunk:
                try:
                    out = dobj.decompress(chunk)
                except zstandard.ZstdError as e:
                    raise _Truncated(f"corrupt zstd data near compressed byte {offset}: {e}") from e
                if out:
                    yield out
                pending_frame = not dobj.eof
                # A file may hold several frames; a finished frame leaves the rest in unused_data.
                chunk = dobj.unused_data if dobj.eof else b""
                if dobj.eof:
                    dobj = dctx.decompressobj()
                    pending_frame = bool(chunk)
            offset = f.tell()
        if pending_frame:
            raise _Truncated(f"truncated zstd stream ({offset} compressed bytes, last frame unfinished)")


def iter_raw_lines(
    path: os.PathLike | str, start_after: int = 0, position: list[int] | None = None
) -> Iterator[RawLine]:
    """Yield every line of a ``.jsonl`` / ``.jsonl.zst`` file as bytes (``\\n`` and ``\\r\\n`` endings).

    Lines ``<= start_after`` are skipped without being returned (resume). A truncated or corrupt
    compressed stream ends the iteration with one ``RawLine(n, None, message)``; the partial last
    line before the cut is dropped. ``position[0]``, if given, tracks the bytes of the file read.
    """
    path = pathlib.Path(path)
    lineno = 0
    buf = b""
    try:
        for block in _iter_blocks(path, position):
            buf += block
            if b"\n" not in block:
                continue
            *lines, buf = buf.split(b"\n")
            for data in lines:
                lineno += 1
                if lineno > start_after:
                    yield RawLine(lineno, data[:-1] if data.endswith(b"\r") else data)
    except _Truncated as e:
        yield RawLine(lineno + 1, None, str(e))
        return
    if buf:
        lineno += 1
        if lineno > start_after:
            yield RawLine(lineno, buf[:-1] if buf.endswith(b"\r") else buf)


class BadRecord(Exception):
    """A line that is not a usable record; ``kind`` is one of :data:`ERROR_KINDS`."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def parse_record(data: bytes) -> dict:
    """Decode one line into a JSON object; raises :class:`BadRecord` (``not_utf8`` / ``malformed_json``)."""
    try:
        line = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRecord("not_utf8", f"invalid utf-8 at byte {e.start}") from None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise BadRecord("malformed_json", f"invalid JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(record, dict):
        raise BadRecord("malformed_json", f"expected a JSON object, got {type(record).__name__}")
    return record


def text_field(record: dict, field: str) -> str:
    """``record[field]`` as a non-blank string; raises :class:`BadRecord` otherwise."""
    if field not in record:
        raise BadRecord("empty_text", f"missing {field!r}")
    value = record[field]
    if value is None:
        raise BadRecord("empty_text", f"{field!r} is null")
    if not isinstance(value, str):
        raise BadRecord("malformed_json", f"{field!r} is a {type(value).__name__}, expected a string")
    if not value.strip():
        raise BadRecord("empty_text", f"empty {field!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from "\udxxx" escapes
        raise BadRecord("not_utf8", f"{field!r} holds an unpaired surrogate escape") from None
    return value


def iter_records(path: os.PathLike | str) -> Iterator[dict]:
    """Parsed JSON objects of a file; raises ``ValueError`` naming file and line on the first bad one."""
    for raw in iter_raw_lines(path):
        if raw.data is None:
            raise ValueError(f"{path}:{raw.line}: {raw.error}")
        if not raw.data.strip():
            continue
        try:
            yield parse_record(raw.data)
        except BadRecord as e:
            raise ValueError(f"{path}:{raw.line}: {e.kind}: {e}") from None


def write_jsonl(path: os.PathLike | str, records: Iterable[dict], level: int = 19) -> int:
    """Write records one per line, zstd-compressed when ``path`` ends in ``.zst``; atomic, byte-stable.

    Returns the number of records written.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600
    n = 0
    try:
        with os.fdopen(fd, "wb") as raw:
            if is_zst(path):
                cctx = zstandard.ZstdCompressor(level=level, threads=0, write_checksum=True)
                out = cctx.stream_writer(raw, closefd=False)
            else:
                out = raw
            for record in records:
                out.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
                n += 1
            if out is not raw:
                out.close()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return n
