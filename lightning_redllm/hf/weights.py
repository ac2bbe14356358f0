"""Weights of a ``transformers`` folder: ``model.safetensors``, or shards with an index above a size.

The layout is ``save_pretrained``'s: one ``model.safetensors`` when everything fits in
``max_shard_size``, else ``model-00001-of-0000N.safetensors`` ... plus ``model.safetensors.index.json``
(``{"metadata": {"total_size": bytes}, "weight_map": {name: file}}``). Tensors are placed in a fixed
(natural) name order, so the same weights always give the same files, byte for byte. Reading never
unpickles: a folder with only ``pytorch_model.bin`` is refused.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Union

import torch

from ..errors import CheckpointLoadError

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: Union[int, str]) -> int:
    """``5000000``, ``"5GB"`` (10^9, as transformers), ``"500MiB"`` (2^20) -> bytes."""
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", str(size).upper())
        if not m or m.group(2) not in _UNITS:
            raise ValueError(f"max_shard_size must be bytes or like '5GB' / '500MB' / '2GiB', got {size!r}")
        value = int(float(m.group(1)) * _UNITS[m.group(2)])
    if value < 1:
        raise ValueError(f"max_shard_size must be positive, got {size!r}")
    return value


def _natural(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def plan_shards(state: dict[str, torch.Tensor], max_bytes: int) -> list[list[str]]:
    """Names per shard: natural name order, a new shard when the next tensor would pass ``max_bytes``
    (a tensor larger than that gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name in sorted(state, key=_natural):
        nbytes = state[name].numel() * state[name].element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def save_weights(state: dict[str, torch.Tensor], folder: Path, max_shard_size: Union[int, str] = "5GB") -> list[str]:
    """Write ``state`` into ``folder`` (previous weight files there are removed); returns the file names."""
    from safetensors.torch import save_file

    max_bytes = parse_size(max_shard_size)
    for old in [*folder.glob("model*.safetensors"), folder / INDEX_NAME]:
        if old.is_file():
            old.unlink()
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    shards = plan_shards(state, max_bytes)
    meta = {"format": "pt"}  # transformers refuses safetensors files without it
    if len(shards) == 1:
        save_file(state, str(folder / WEIGHTS_NAME), metadata=meta)
        return [WEIGHTS_NAME]
    files, weight_map = [], {}
    for i, names in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: state[n] for n in names}, str(folder / fname), metadata=meta)
        files.append(fname)
        weight_map.update({n: fname for n in names})
    total = sum(t.numel() * t.element_size() for t in state.values())
    ordered = dict(sorted(weight_map.items(), key=lambda kv: _natural(kv[0])))
    index = {"metadata": {"total_size": total}, "weight_map": ordered}
    (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return files + [INDEX_NAME]


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001 - SafetensorError and friends carry no file name
        reason = " ".join(str(err).split())
        raise CheckpointLoadError(f"{path} is not a readable safetensors file (truncated or corrupt?): "
                                  f"{type(err).__name__}: {reason}") from None


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a folder's ``model.safetensors`` or of the shards its index lists."""
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointLoadError(f"{index}: not a safetensors index ({type(err).__name__}: {err})") from None
        state: dict[str, torch.Tensor] = {}
        for fname in sorted(set(weight_map.values())):
            part = folder / fname
            if not part.is_file() or part.parent != folder:
                raise CheckpointLoadError(f"{index}: lists shard {fname!r}, which is not a file in {folder}")
            state.update(_load(part))
        missing = sorted(set(weight_map) - set(state))
        if missing:
            name = missing[0]
            raise CheckpointLoadError(f"{index}: {name!r} is listed but not in its shard {weight_map[name]}")
        return state
    if (folder / WEIGHTS_NAME).is_file():
        return _load(folder / WEIGHTS_NAME)
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
    if pickled:
        raise CheckpointLoadError(f"{folder} holds only pickle weights ({', '.join(pickled)}); lightning_redllm reads "
                                  "safetensors only (save them with save_pretrained(..., safe_serialization=True))")
    raise CheckpointLoadError(f"{folder} holds no {WEIGHTS_NAME} or {INDEX_NAME}")


__all__ = ["WEIGHTS_NAME", "INDEX_NAME", "parse_size", "plan_shards", "save_weights", "read_weights"]
