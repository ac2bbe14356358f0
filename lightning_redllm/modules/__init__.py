"""LightningModules: the shared base and the two families (subclass these for new objectives).

The three load together on first use (``from lightning_redllm.modules import RedLLMModule``), not on
``import lightning_redllm.modules.checkpoint``: reading a checkpoint needs no Lightning, and importing
it costs seconds that ``generate`` and ``export`` should not pay.
"""
from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {"LanguageModelModule": "base", "NonFiniteLossError": "base", "DecLLMModule": "causal",
           "RedLLMModule": "prefix"}


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        # all three at once: LightningCLI finds the families by short name among the base's subclasses
        for sub in ("base", "causal", "prefix"):
            mod = importlib.import_module(f"{__name__}.{sub}")
            globals().update({k: getattr(mod, k) for k, v in _PUBLIC.items() if v == sub})
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LanguageModelModule", "DecLLMModule", "RedLLMModule", "NonFiniteLossError"]
