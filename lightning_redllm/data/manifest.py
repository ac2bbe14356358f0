"""The shard manifest: the one owner of the shard format's name, its schema, and reading,
validating and writing ``manifest.json``.

A directory of webdataset shards carries one ``manifest.json`` (format ``FORMAT``)::

    {
     "format": FORMAT,            # this module's constant; change the format here and only here
     "kind": "pretrain" | "instruct",
     "tokenizer": {"path", "name", "fingerprint", "vocab_size", "bos_id", "eos_id", "pad_id", "unk_id"},
     "dtype": "uint16" | "uint32",  # of the token arrays in the shards
     "shards": [{"name": "shard-000000.tar", "documents": int, "tokens": int, "sources": {...}, ...}],
     "totals": {"documents": int, "tokens": int, "sources": {...}, ...},
     "errors": {...},             # what the converter skipped (bad lines), by reason
     "complete": true             # false while a conversion is still running (resumable)
    }

Writers: ``data_pipelines`` (the converters) and ``data.synthetic`` (test/benchmark shards), both
through :func:`write_manifest`. Readers: the converter's resume (:func:`read_manifest`) and the
DataModule's shard loader (``data.shards.ShardManifest.load``). Imports nothing from the package.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

FORMAT = "lightning_redllm.shards/1"
MANIFEST_NAME = "manifest.json"
KINDS = ("pretrain", "instruct")
DTYPES = ("uint16", "uint32")
REQUIRED = ("format", "kind", "tokenizer", "dtype", "shards", "totals", "errors", "complete")


def manifest_path(where: str | os.PathLike) -> Path:
    """``<dir>/manifest.json`` for a directory; a ``*.json`` path is taken as the file itself."""
    path = Path(where)
    if path.is_dir() or not path.name.endswith(".json"):
        path = path / MANIFEST_NAME
    return path


def new_manifest(kind: str, tokenizer: dict[str, Any], dtype: str, shards: list[dict[str, Any]],
                 totals: Optional[dict[str, Any]] = None, errors: Optional[dict[str, Any]] = None,
                 complete: bool = True, **extra: Any) -> dict[str, Any]:
    """A manifest in the current format; ``totals`` default to the sums over ``shards``;
    ``extra`` keys (e.g. ``tool_version``) are kept as given."""
    if totals is None:
        totals = {"documents": sum(int(s.get("documents", 0)) for s in shards),
                  "tokens": sum(int(s.get("tokens", 0)) for s in shards)}
    manifest = {"format": FORMAT, "kind": kind, **extra, "tokenizer": dict(tokenizer), "dtype": str(dtype),
                "shards": list(shards), "totals": totals, "errors": dict(errors or {}), "complete": bool(complete)}
    return validate_manifest(manifest, "<new manifest>", require_complete=False)


def validate_manifest(raw: Any, where: str | os.PathLike, require_complete: bool = True) -> dict[str, Any]:
    """Check a loaded manifest; ``ValueError`` naming ``where`` and the offending key/value."""
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{where}: not a {FORMAT} shard manifest (format={got!r})")
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise ValueError(f"{where}: shard manifest lacks keys {missing}")
    if raw["kind"] not in KINDS:
        raise ValueError(f"{where}: shard manifest kind {raw['kind']!r} is not one of {KINDS}")
    if raw["dtype"] not in DTYPES:
        raise ValueError(f"{where}: shard manifest dtype {raw['dtype']!r} is not one of {DTYPES}")
    if not isinstance(raw["tokenizer"], dict):
        raise ValueError(f"{where}: shard manifest 'tokenizer' must be a mapping, got {type(raw['tokenizer']).__name__}")
    if not isinstance(raw["shards"], list) or not all(isinstance(s, dict) and "name" in s for s in raw["shards"]):
        raise ValueError(f"{where}: shard manifest 'shards' must be a list of entries with a 'name'")
    if require_complete and raw["complete"] is not True:
        raise ValueError(f"{where}: conversion is not complete; re-run the converter to resume it")
    return raw


def read_manifest(where: str | os.PathLike, require_complete: bool = True) -> dict[str, Any]:
    """Load and validate a manifest (a directory or the ``.json`` file); ``ValueError`` naming the
    path when it is missing, not JSON, of another format, lacks keys, or (with
    ``require_complete``) belongs to an unfinished conversion."""
    path = manifest_path(where)
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: no shard manifest (convert data with data_pipelines first)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable shard manifest: {e}") from None
    return validate_manifest(raw, path, require_complete)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON to a temporary file beside ``path``, fsync, then rename (readers never see half a file)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_manifest(directory: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Validate and write ``<directory>/manifest.json`` atomically; returns its path."""
    path = Path(directory) / MANIFEST_NAME
    validate_manifest(manifest, path, require_complete=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, manifest)
    return path
