"""lightning_redllm: train RedLLM (encoder-decoder) and DecLLM (decoder-only) side by side.

Heavy submodules load lazily, so ``import lightning_redllm`` stays cheap::

    from lightning_redllm import ModelConfig, RedLLM, DecLLM, RedLLMModule, DecLLMModule
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "ModelConfig": "lightning_redllm.config",
    "DecLLM": "lightning_redllm.models",
    "RedLLM": "lightning_redllm.models",
    "build_model": "lightning_redllm.models",
    "LanguageModelModule": "lightning_redllm.modules",
    "DecLLMModule": "lightning_redllm.modules",
    "RedLLMModule": "lightning_redllm.modules",
    "generate": "lightning_redllm.generate",
    "generate_text": "lightning_redllm.generate",
    "SamplingOptions": "lightning_redllm.generate",
    "load_tokenizer": "lightning_redllm.tokenizer",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lightning_redllm' has no attribute {name!r}")


__all__ = sorted(_LAZY) + ["__version__"]
