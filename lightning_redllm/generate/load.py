"""Loading a checkpoint for inference: the model in eval mode, its tokenizer and config.

Lives below the command layer so that evaluation code (``eval/``, ``study``) and the subcommands
share it without importing each other.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..config import ModelConfig
from ..models import LanguageModel
from ..modules.checkpoint import model_from_checkpoint
from ..tokenizer import Tokenizer, load_tokenizer


def load_for_inference(ckpt: str | Path, tokenizer: Optional[str] = None,
                       device: str = "cpu") -> tuple[LanguageModel, Tokenizer, ModelConfig]:
    """Model (eval mode), tokenizer and config from a Lightning checkpoint, sharded checkpoint folder
    or safetensors file; the tokenizer defaults to the one the checkpoint records and must fit the vocab."""
    model, cfg, hparams = model_from_checkpoint(ckpt)
    tok_name = tokenizer or hparams.get("tokenizer")
    if tok_name is None:
        raise ValueError(f"no tokenizer recorded in {ckpt}; pass --tokenizer")
    tok = load_tokenizer(tok_name)
    tok.check_fits(cfg.vocab_size)
    return model.to(device).eval(), tok, cfg
