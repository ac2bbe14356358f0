"""LightningModules: the shared base and the two families (subclass these for new objectives)."""
from .base import LanguageModelModule, NonFiniteLossError
from .causal import DecLLMModule
from .prefix import RedLLMModule

__all__ = ["LanguageModelModule", "DecLLMModule", "RedLLMModule", "NonFiniteLossError"]
