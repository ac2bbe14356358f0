"""Reading a ``transformers`` model folder back: ``generate --ckpt DIR``, ``evaluate --ckpt DIR`` and
``fit --model.init_args.init_from DIR`` reach this through ``modules.checkpoint.read_checkpoint``.

A folder is recognised by its ``config.json``. Accepted: this package's exports (``model_type``
``lightning_decllm`` / ``lightning_redllm``) and plain Llama folders that match a DecLLM (tied
embeddings, SwiGLU, no biases, unscaled RoPE). Weights are read from safetensors only; anything else
is refused with one line naming the file and key (see ``convert.model_config_from_hf``).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import CheckpointLoadError
from .convert import LLAMA_TYPE, from_llama_names, model_config_from_hf
from .weights import read_weights

CONFIG_NAME = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def is_hf_folder(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / CONFIG_NAME).is_file()


def read_config_json(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointLoadError(f"{path}: not a readable JSON file ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise CheckpointLoadError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _identity(path: Path) -> str:
    """What decides a tokenizer's ids: a SentencePiece file's bytes; a tokenizer.json's content without
    its post-processor (the export adds DecLLM's bos there; encoding here never adds specials)."""
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError):
            return "unreadable:" + hashlib.sha256(path.read_bytes()).hexdigest()
        data.pop("post_processor", None)
        return "json:" + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return "bytes:" + hashlib.sha256(path.read_bytes()).hexdigest()


def folder_tokenizer(folder: Path) -> Optional[str]:
    """The folder's tokenizer file, or the bundled tokenizer's name when the file is that one (so an
    imported model keeps the bundled tokenizer's name and fingerprint); None when there is none."""
    from ..tokenizer import BUNDLED_TOKENIZERS, bundled_tokenizer_path

    for name in TOKENIZER_FILES:
        path = folder / name
        if path.is_file():
            ident = _identity(path)
            for bundled in BUNDLED_TOKENIZERS:
                ref = bundled_tokenizer_path(bundled)
                if ref.is_file() and _identity(ref) == ident:
                    return bundled
            return str(path)
    return None


def read_hf_folder(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(state dict in this package's parameter names, ``ModelConfig`` dict, hyperparameters with the
    tokenizer) of a ``transformers`` folder."""
    folder = Path(folder)
    data = read_config_json(folder)
    cfg = model_config_from_hf(data, where=str(folder / CONFIG_NAME))
    state = read_weights(folder)
    if data.get("model_type") == LLAMA_TYPE:
        state = from_llama_names(state, str(folder))
    hparams: dict[str, Any] = {}
    tok = folder_tokenizer(folder)
    if tok is not None:
        hparams["tokenizer"] = tok
    if cfg.bidirectional_prefix:
        hparams["bidirectional_prefix"] = True
    return state, cfg.to_dict(), hparams


__all__ = ["CONFIG_NAME", "is_hf_folder", "read_config_json", "read_hf_folder", "folder_tokenizer"]
