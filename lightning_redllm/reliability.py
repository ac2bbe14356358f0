"""Fault tolerance: atomic checkpoint files and clear errors for unreadable ones.

* :class:`AtomicCheckpointIO` — a Lightning ``CheckpointIO`` (``--trainer.plugins
  lightning_redllm.reliability.AtomicCheckpointIO``) that writes every checkpoint to a temporary
  file *in the same directory*, fsyncs it, checks it is a complete archive, ``os.replace``-s it over
  the target and fsyncs the directory. A process killed mid-write (preemption, OOM killer, kill -9)
  leaves the previous file untouched and at worst a hidden ``.<name>.tmp-*`` file, which no
  ``*.ckpt`` pattern (Lightning's ``ckpt_path="last"`` lookup included) matches and the next write
  of that name removes. A failed write (disk full, permission) raises :class:`CheckpointWriteError`
  naming the file, after removing the partial temp file. Loading defaults to
  ``torch.load(weights_only=True)`` and a truncated/corrupt/unsafe file raises
  :class:`CheckpointLoadError` naming it.

  DeepSpeed (ZeRO) checkpoints are folders written by DeepSpeed itself, not through a
  CheckpointIO, and are not covered: an interrupted save can leave a mixed folder.

  Why not Lightning's default ``TorchCheckpointIO``: it serializes the whole checkpoint into memory,
  writes it to a temp file from ``tempfile.mkstemp()`` (the *system* temp dir, often another and
  smaller filesystem) and ``shutil.move``-s it, which across filesystems is a plain copy — a kill
  during that copy leaves a truncated ``last.ckpt`` — and never fsyncs.

The CLI's one-line error wrapper (``guarded``) is in :mod:`lightning_redllm.cli.guard`.
"""
from __future__ import annotations

import errno
import logging
import os
import pickle
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Optional

import torch

from .errors import CheckpointLoadError, CheckpointWriteError

log = logging.getLogger(__name__)

TMP_MARKER = ".tmp-"


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def error_in_chain(err: Optional[BaseException], types) -> Optional[BaseException]:
    """``err`` or the first exception it was raised from / while handling that is one of ``types``."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, types):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _os_error_in(err: BaseException) -> Optional[OSError]:
    """The OSError behind ``err`` (torch.save turns a failing ``write`` into a RuntimeError)."""
    return error_in_chain(err, OSError)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """Hidden temp file beside ``path``; the name does not end in the target's suffix."""
    return path.with_name(f".{path.name}{TMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Temp files left beside ``path`` by writers that were killed mid-write."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(path.parent.glob(f".{path.name}{TMP_MARKER}*"))


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None],
                 verify: Optional[Callable[[Path], None]] = None) -> Path:
    """Write ``path`` so that readers only ever see the old or the complete new content.

    ``write(f)`` fills an open temp file in the same directory; it is flushed and fsynced,
    ``verify(temp_path)`` may check it, then it replaces ``path`` and the directory is fsynced.

    Raises:
        CheckpointWriteError: any OSError on the way (ENOSPC, EACCES, EROFS, ENOTDIR, ...), with
            the target path in the message; the partial temp file is removed, ``path`` untouched.
    """
    path = Path(path)
    for stale in stale_temp_files(path):
        log.info("removing %s left by an interrupted checkpoint write", stale)
        try:
            stale.unlink()
        except OSError:
            pass
    tmp: Optional[Path] = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_name(path)
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)
        os.replace(tmp, path)
        tmp = None
    except BaseException as err:  # KeyboardInterrupt included: never leave the partial file behind
        if tmp is not None:
            try:
                tmp.unlink()
            except OSError:
                pass
        os_err = _os_error_in(err)
        if os_err is not None:
            code = os_err.errno or errno.EIO
            reason = os_err.strerror or str(os_err)
            raise CheckpointWriteError(
                code, f"cannot write checkpoint {path}: {reason} (errno {errno.errorcode.get(code, code)}); "
                f"the previous file at that path, if any, is unchanged", str(path)) from err
        raise
    _fsync_dir(path.parent)
    return path


def check_writable(directory: str | os.PathLike) -> None:
    """Create ``directory`` and write/remove a probe file in it (local paths only).

    Raises:
        CheckpointWriteError: naming the folder (not a directory, permission, read-only, full disk).
    """
    directory = os.fspath(directory)
    if not _is_local(directory):
        return
    directory = directory[len("file://"):] if directory.startswith("file://") else directory
    probe = Path(directory) / f".write-probe-{os.getpid()}"
    try:
        atomic_write(probe, lambda f: f.write(b"ok"))
    except CheckpointWriteError as err:
        raise CheckpointWriteError(err.errno, f"checkpoint folder {directory} is not writable: "
                                   f"{_os_error_in(err.__cause__) or err}", directory) from err
    try:
        probe.unlink()
    except OSError:
        pass


def verify_torch_archive(path: Path) -> None:
    """Cheap completeness check of a ``torch.save`` file: the zip central directory (at the end) reads."""
    try:
        with zipfile.ZipFile(path) as zf:
            zf.infolist()
    except (zipfile.BadZipFile, OSError) as err:
        raise CheckpointLoadError(f"checkpoint {path} is not a complete torch archive: {err}") from err


def load_torch_file(path: str | os.PathLike, map_location: Any = "cpu", weights_only: bool = True,
                    mmap: bool = False) -> Any:
    """``torch.load`` with errors that name the file (missing, truncated, corrupt, unsafe pickle);
    ``mmap``: tensors stay backed by the file until used."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, f"checkpoint not found: {path}", str(path))
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only, mmap=mmap)
    except pickle.UnpicklingError as err:
        # the weights-only unpickler reports both a forbidden class and plain garbage; only the
        # former names a GLOBAL
        why = [ln.strip() for ln in str(err).splitlines() if "GLOBAL" in ln or "Unsupported global" in ln]
        if why:
            raise CheckpointLoadError(
                f"checkpoint {path} holds pickled objects that weights_only=True refuses ({why[0]}); "
                "this package never writes such objects, so the file was tampered with or comes from other "
                "code: load it with weights_only=False only if you trust its source"
            ) from err
        raise CheckpointLoadError(_corrupt_message(path, err)) from err
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad file, named as such
        # RuntimeError/EOFError/OSError/ValueError from the zip reader; a small non-torch file goes to
        # torch's legacy (pre-zip) unpickler, which fails with whatever its bytes decode to (KeyError,
        # IndexError, AttributeError, ...)
        raise CheckpointLoadError(_corrupt_message(path, err)) from err


def _reason(err: BaseException) -> str:
    """The informative line of a torch.load error (its weights-only errors are paragraphs of advice)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    marker = "WeightsUnpickler error:"
    for i, ln in enumerate(lines):
        if marker in ln:
            rest = ln.split(marker, 1)[1].strip()
            return rest or (lines[i + 1] if i + 1 < len(lines) else ln)
    return lines[0] if lines else ""


def _corrupt_message(path: Path, err: BaseException) -> str:
    size = path.stat().st_size if path.exists() else 0
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        head = b""
    # torch.save writes a zip archive (PK..); torch's legacy format is a pickle (protocol byte 0x80)
    if head and not head.startswith((b"PK\x03\x04", b"\x80")):
        return (f"cannot load checkpoint {path} ({size} bytes): not a torch checkpoint (it starts with {head!r}; "
                "expected a .ckpt written by Lightning / torch.save, a .safetensors file or a checkpoint folder)")
    return (f"cannot load checkpoint {path} ({size} bytes): the file is truncated or corrupt "
            f"({type(err).__name__}: {_reason(err)}); use an earlier checkpoint")


def _define_atomic_checkpoint_io() -> type:
    """The class behind :data:`AtomicCheckpointIO`, defined on first use: it subclasses Lightning's
    ``TorchCheckpointIO``, and importing Lightning costs seconds that ``generate``, ``export`` and
    ``--help`` (which never write a Lightning checkpoint) should not pay."""
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
    from lightning.fabric.utilities.types import _PATH

    class AtomicCheckpointIO(TorchCheckpointIO):
        """``TorchCheckpointIO`` with crash-safe writes and clear load errors (see the module docs).

        Remote paths (``s3://``, ``gs://``, ...) go to Lightning's own implementation unchanged.
        """

        def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
            if storage_options is not None or not _is_local(os.fspath(path)):
                return super().save_checkpoint(checkpoint, path, storage_options)
            target = os.fspath(path)
            target = target[len("file://"):] if target.startswith("file://") else target
            atomic_write(target, lambda f: self._dump(checkpoint, f), verify=verify_torch_archive)

        def _dump(self, checkpoint: dict[str, Any], f: IO[bytes]) -> None:
            """Serialize into the open temp file (tests override this to simulate crashes mid-write)."""
            torch.save(checkpoint, f)

        def load_checkpoint(self, path: _PATH, map_location: Optional[Any] = lambda storage, loc: storage,
                            weights_only: Optional[bool] = None) -> dict[str, Any]:
            if not _is_local(os.fspath(path)):
                return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
            return load_torch_file(path, map_location=map_location,
                                   weights_only=True if weights_only is None else weights_only)

    AtomicCheckpointIO.__module__ = __name__
    return AtomicCheckpointIO


def __getattr__(name: str) -> Any:
    if name == "AtomicCheckpointIO":  # `lightning_redllm.reliability.AtomicCheckpointIO`, as recipes name it
        cls = globals()["AtomicCheckpointIO"] = _define_atomic_checkpoint_io()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AtomicCheckpointIO", "CheckpointLoadError", "CheckpointWriteError", "atomic_write", "check_writable",
           "error_in_chain", "load_torch_file", "stale_temp_files", "verify_torch_archive"]
