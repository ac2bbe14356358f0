"""Reading model weights from the three places a stage can start from, and writing safetensors.

* a Lightning checkpoint file (``*.ckpt``), read with ``torch.load(weights_only=True)``;
* a sharded checkpoint directory: ``torch.distributed.checkpoint`` (Lightning
  ``ModelParallelStrategy`` / FSDP2, consolidated here) or DeepSpeed ZeRO (needs ``deepspeed``);
* a consolidated ``*.safetensors`` file whose metadata holds the model config as JSON.

Untrusted files: ``.ckpt`` and ``.safetensors`` never unpickle arbitrary objects. A DeepSpeed
directory is different: our own read of its ``*model_states.pt`` (for the model config) uses
``weights_only=True`` and so refuses a tampered file *before* DeepSpeed looks at it, but DeepSpeed's
consolidation (``zero_to_fp32``, deepspeed 0.19) then unpickles the optimizer shards with
``weights_only=False``, which we cannot change. Treat DeepSpeed directories as trusted input and share
weights as safetensors (``python -m lightning_redllm export``).

Every loader returns the bare model state dict (keys as in ``DecLLM``/``RedLLM``) and the saved
``ModelConfig`` dict when the file has one; :func:`check_compatible` then refuses a checkpoint of
the other family or another size with an error naming the file and the differing keys.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Optional

import torch

from ..config import ModelConfig

#: fields that decide the parameter shapes; a checkpoint must agree on all of them
SHAPE_KEYS = ("family", "vocab_size", "d_model", "n_heads", "n_kv_heads", "head_dim", "ffn_dim",
              "n_layers", "n_encoder_layers", "n_decoder_layers")
CONFIG_METADATA_KEY = "lightning_redllm.model_config"
TOKENIZER_METADATA_KEY = "lightning_redllm.tokenizer"


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str = "model.") -> dict[str, torch.Tensor]:
    if any(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


def load_lightning_checkpoint(path: Path) -> dict[str, Any]:
    """The raw checkpoint dict, loaded without unpickling arbitrary objects.

    Raises:
        FileNotFoundError: no such file.
        ValueError (``CheckpointLoadError``): truncated, corrupt, or holding pickled objects; names the file.
    """
    from ..reliability import load_torch_file

    return load_torch_file(path, map_location="cpu", weights_only=True)


class Checkpoint(NamedTuple):
    """What a checkpoint holds for building a model: bare weights, the saved ``ModelConfig`` dict and
    the LightningModule hyperparameters (tokenizer, ...); the last two may be None."""

    state: dict[str, torch.Tensor]
    config: Optional[dict[str, Any]]
    hparams: Optional[dict[str, Any]]
    step: Optional[int] = None  #: the training step it was saved at (None: not recorded, e.g. safetensors)


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], Optional[dict[str, Any]]]:
    """(model state dict, saved model config dict or None) from a ckpt file, sharded dir or safetensors."""
    ckpt = read_checkpoint(path)
    return ckpt.state, ckpt.config


def read_checkpoint(path: str | Path) -> Checkpoint:
    """One read of a ckpt file, sharded checkpoint dir, safetensors file or transformers folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        from ..hf.folder import is_hf_folder, read_hf_folder

        if is_hf_folder(path):  # a transformers folder (python -m lightning_redllm export --format hf)
            return Checkpoint(*read_hf_folder(path))
        if (path / "meta.pt").is_file() and any(path.glob("*.distcp")):
            return _load_distributed_dir(path)
        return _load_deepspeed_dir(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        from ..errors import CheckpointLoadError

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            state = load_file(str(path))
        except Exception as err:  # noqa: BLE001 - SafetensorError and friends carry no file name
            reason = " ".join(str(err).split())
            raise CheckpointLoadError(f"checkpoint {path} is not a readable safetensors file "
                                      f"(truncated or corrupt?): {type(err).__name__}: {reason}") from None
        cfg = json.loads(meta[CONFIG_METADATA_KEY]) if CONFIG_METADATA_KEY in meta else None
        hparams = {"tokenizer": meta[TOKENIZER_METADATA_KEY]} if TOKENIZER_METADATA_KEY in meta else None
        return Checkpoint(state, cfg, hparams)
    ckpt = load_lightning_checkpoint(path)
    if "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict' key)")
    return Checkpoint(_strip_prefix(ckpt["state_dict"]), ckpt.get("model_config"), ckpt.get("hyper_parameters"),
                      ckpt.get("global_step"))


class WeightStream(NamedTuple):
    """Weights read one tensor at a time (:func:`stream_weights`): ``shapes`` maps every name to a
    meta tensor of its shape (for :func:`check_compatible`); ``get(name)`` reads that tensor."""

    shapes: dict[str, torch.Tensor]
    config: Optional[dict[str, Any]]
    get: Callable[[str], torch.Tensor]
    step: Optional[int] = None  #: as :attr:`Checkpoint.step`


@contextlib.contextmanager
def stream_weights(path: str | Path) -> Iterator[WeightStream]:
    """Open a checkpoint for reading tensor by tensor, so a rank that writes its model one module at a
    time (DeepSpeed ZeRO-3 ``init_from``) never holds a second full copy of the weights.

    * ``.safetensors``: memory-mapped; ``get`` copies out one tensor.
    * Lightning ``.ckpt``: ``torch.load(mmap=True, weights_only=True)``: the tensors stay backed by the
      file (the page cache, shared by every rank of a node) until ``get`` copies one out.
    * a sharded checkpoint directory (DeepSpeed / torch.distributed.checkpoint) has no per-tensor
      reader: it is consolidated in memory as by :func:`read_checkpoint` (export it to safetensors
      once, then start 8B runs from that file).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_file() and path.suffix == ".safetensors":
        from safetensors import safe_open

        from ..errors import CheckpointLoadError

        try:
            handle = safe_open(str(path), framework="pt")
            meta = handle.metadata() or {}
            shapes = {k: torch.empty(handle.get_slice(k).get_shape(), device="meta") for k in handle.keys()}
        except Exception as err:  # noqa: BLE001 - SafetensorError and friends carry no file name
            reason = " ".join(str(err).split())
            raise CheckpointLoadError(f"checkpoint {path} is not a readable safetensors file "
                                      f"(truncated or corrupt?): {type(err).__name__}: {reason}") from None
        cfg = json.loads(meta[CONFIG_METADATA_KEY]) if CONFIG_METADATA_KEY in meta else None
        with handle:
            yield WeightStream(shapes, cfg, handle.get_tensor)
        return
    if path.is_file():
        from ..reliability import load_torch_file

        ckpt = load_torch_file(path, map_location="cpu", weights_only=True, mmap=True)
        if "state_dict" not in ckpt:
            raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict' key)")
        state = _strip_prefix(ckpt["state_dict"])
        cfg, step = ckpt.get("model_config"), ckpt.get("global_step")
        del ckpt
    else:
        state, cfg, _, step = read_checkpoint(path)
    shapes = {k: torch.empty(v.shape, device="meta") for k, v in state.items()}
    yield WeightStream(shapes, cfg, lambda name: state[name].clone(), step)


def _load_distributed_dir(path: Path) -> Checkpoint:
    """A sharded ``torch.distributed.checkpoint`` folder (Lightning ``ModelParallelStrategy`` /
    FSDP2): consolidated in memory on one process, read with ``weights_only=True``."""
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from ..reliability import load_torch_file

    meta = load_torch_file(path / "meta.pt")
    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "consolidated.pt"
        try:
            dcp_to_torch_save(str(path), str(full))
        except Exception as err:  # noqa: BLE001 - re-raised naming the folder
            raise ValueError(f"cannot read sharded checkpoint {path}: {type(err).__name__}: {err}") from err
        ckpt = load_torch_file(full)
    if "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a Lightning sharded checkpoint (no 'state_dict')")
    return Checkpoint(_strip_prefix(ckpt["state_dict"]), meta.get("model_config"), meta.get("hyper_parameters"),
                      meta.get("global_step"))


def _load_deepspeed_dir(path: Path) -> Checkpoint:
    if not any(path.rglob("*model_states.pt")):
        from ..errors import CheckpointLoadError

        raise CheckpointLoadError(
            f"checkpoint folder {path} holds no checkpoint: no DeepSpeed *model_states.pt, no "
            "torch.distributed.checkpoint meta.pt + *.distcp, no transformers config.json; pass a .ckpt or "
            ".safetensors file or a checkpoint folder")
    try:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    except ImportError as err:
        raise ValueError(
            f"{path} is a directory (a DeepSpeed checkpoint?) but deepspeed is not installed; "
            "install it (`pip install deepspeed`) or pass a consolidated .safetensors file"
        ) from err
    from ..reliability import load_torch_file

    cfg = hparams = step = None
    # weights_only=True first: a tampered model-states file is refused before DeepSpeed's loader
    # (which uses weights_only=False) opens the directory. DeepSpeed's own keys (param_shapes of
    # torch.Size, ds_config dict, ds_version str, ...) and Lightning's client state are plain data.
    for client in sorted(path.rglob("*model_states.pt")):
        client_state = load_torch_file(client, map_location="cpu", weights_only=True)
        if cfg is None:
            cfg, hparams = client_state.get("model_config"), client_state.get("hyper_parameters")
            step = client_state.get("global_step")
    state = get_fp32_state_dict_from_zero_checkpoint(str(path))
    return Checkpoint(_strip_prefix(state), cfg, hparams, step)


def check_compatible(own: ModelConfig, saved: Optional[dict[str, Any]], state: dict[str, torch.Tensor],
                     model: torch.nn.Module, path: str | Path) -> None:
    """ValueError naming ``path`` when the checkpoint is of another family/size than ``own``."""
    if saved is not None:
        other = ModelConfig.from_dict(saved)
        diffs = [f"{k}: checkpoint {getattr(other, k)!r} vs model {getattr(own, k)!r}"
                 for k in SHAPE_KEYS if getattr(other, k) != getattr(own, k)
                 and not (k.startswith("n_") and k.endswith("layers")
                          and (_unused_layer_key(own, k) or _unused_layer_key(other, k)))]
        if diffs:
            raise ValueError(f"checkpoint {path} does not fit this model: " + "; ".join(diffs))
    # a ZeRO-3-partitioned parameter's tensor is its local shard; its real shape is ds_shape
    params = dict(model.named_parameters())
    expected = {k: tuple(getattr(params[k], "ds_shape", v.shape)) if k in params else tuple(v.shape)
                for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k]))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        if wrong:
            k = wrong[0]
            parts.append(f"shape of {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k])}")
        raise ValueError(f"checkpoint {path} does not fit this {own.family} model: " + "; ".join(parts))


def model_from_checkpoint(path: str | Path):
    """(model with the checkpoint's weights, its ModelConfig, module hyperparameters or {})."""
    from ..models import build_model

    ckpt = read_checkpoint(path)
    if ckpt.config is None:
        raise ValueError(f"{path} holds no model config; export it with `python -m lightning_redllm export`")
    cfg = ModelConfig.from_dict(ckpt.config)
    if cfg.family == "decllm" and (ckpt.hparams or {}).get("bidirectional_prefix"):
        cfg.bidirectional_prefix = True  # checkpoints written before the config recorded it
    model = build_model(cfg)
    check_compatible(cfg, ckpt.config, ckpt.state, model, path)
    model.load_state_dict(ckpt.state)
    return model, cfg, ckpt.hparams or {}


def init_from_message(path: str | Path, config: ModelConfig, step: Optional[int]) -> str:
    """The one line ``fit`` prints once ``init_from`` weights are in the model: file, step, parameters."""
    from ..config import num_parameters

    when = f"step {step}" if step is not None else "no training step recorded"
    return (f"init_from: loaded {config.family} weights from {path} ({when}, "
            f"{num_parameters(config) / 1e6:.2f}M parameters)")


def _unused_layer_key(cfg: ModelConfig, key: str) -> bool:
    if cfg.family == "decllm":
        return key in ("n_encoder_layers", "n_decoder_layers")
    return key == "n_layers"


def save_safetensors(model: torch.nn.Module, config: ModelConfig, path: str | Path,
                     tokenizer: Optional[str] = None) -> Path:
    """Write the model weights (contiguous, tied embedding stored once), its config and the name or
    path of its tokenizer, so ``generate`` / ``evaluate`` need nothing else. The file gets the usual
    permissions (0666 minus the umask; safetensors itself creates it 0600)."""
    import os

    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {CONFIG_METADATA_KEY: json.dumps(config.to_dict())}
    if tokenizer:
        meta[TOKENIZER_METADATA_KEY] = str(tokenizer)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    tmp.replace(path)
    return path
