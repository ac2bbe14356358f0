"""Hugging Face interop: export to a ``transformers`` folder, read such a folder back.

* :func:`export_hf` -- ``python -m lightning_redllm export --ckpt X --format hf --out DIR``;
* :func:`read_hf_folder` -- what ``generate`` / ``evaluate`` / ``init_from`` use for a folder
  (through ``modules.checkpoint.read_checkpoint``).

``templates/`` holds the modelling code copied into every export; it imports ``transformers`` and
is never imported by this package.
"""
from .convert import ArchitectureError, hf_config, is_native_llama, model_config_from_hf
from .export import export_hf, training_progress
from .folder import is_hf_folder, read_hf_folder
from .weights import parse_size, read_weights, save_weights

__all__ = ["ArchitectureError", "export_hf", "hf_config", "is_hf_folder", "is_native_llama", "model_config_from_hf",
           "parse_size", "read_hf_folder", "read_weights", "save_weights", "training_progress"]
