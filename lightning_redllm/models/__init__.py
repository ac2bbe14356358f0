"""DecLLM and RedLLM, composed from the shared block library in ``lightning_redllm.nn``."""
from ..config import ModelConfig
from .base import LanguageModel, ModelOutput
from .decllm import DecLLM
from .redllm import EncoderOutput, RedLLM, RedLLMCache


def build_model(config: ModelConfig) -> LanguageModel:
    """The model class for ``config.family`` (weights uninitialized until ``init_weights``)."""
    return {"decllm": DecLLM, "redllm": RedLLM}[config.family](config)


__all__ = ["DecLLM", "RedLLM", "LanguageModel", "ModelOutput", "EncoderOutput", "RedLLMCache", "build_model"]
