"""RedLLMModule: encoder-decoder training — prefix LM pretraining (each packed sequence split into
an encoder prefix and decoder targets) and instruction tuning (inputs -> encoder, targets ->
decoder)."""
from __future__ import annotations

from typing import Any, Optional

import torch

from ..config import training_flops_per_sequence
from ..data.objectives import instruct_encoder_decoder, prefix_lm
from ..models import ModelOutput
from .base import LanguageModelModule
from .contract import check_objective_output


class RedLLMModule(LanguageModelModule):
    """Encoder-decoder LM (prefix-LM objective).

    Args:
        prefix_len: encoder tokens of each pretraining sequence; default: half of it (study: 1024
            of 2048).
        **kwargs: see :class:`LanguageModelModule`.
    """

    family = "redllm"
    #: what :meth:`objective` returns: a dict with these tensors (and optionally those)
    OBJECTIVE_KEYS = ("encoder_input_ids", "decoder_input_ids", "labels")
    OPTIONAL_OBJECTIVE_KEYS = ("encoder_lengths",)

    def __init__(self, preset: str = "redllm-tiny", *, prefix_len: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(preset=preset, **kwargs)
        if prefix_len is not None and prefix_len < 1:
            raise ValueError(f"prefix_len must be >= 1, got {prefix_len}")
        self.prefix_len = prefix_len

    def objective(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        if "tokens" in batch:
            tokens = batch["tokens"]
            p = self.prefix_len if self.prefix_len is not None else tokens.shape[1] // 2
            out = prefix_lm(tokens, p, tok.bos_id)
            out.pop("encoder_lengths", None)  # every prefix is full: no padding mask needed
            return out
        return instruct_encoder_decoder(batch["inputs"], batch["input_lengths"], batch["targets"],
                                        batch["target_lengths"], tok.bos_id, tok.pad_id)

    def check_inputs(self, inputs: dict[str, torch.Tensor]) -> bool:
        check_objective_output(self, inputs, self.OBJECTIVE_KEYS, self.OPTIONAL_OBJECTIVE_KEYS)
        self.model.check_inputs(inputs["encoder_input_ids"], inputs["decoder_input_ids"], inputs.get("labels"),
                                encoder_lengths=inputs.get("encoder_lengths"))
        return True

    def forward_batch(self, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        check_objective_output(self, inputs, self.OBJECTIVE_KEYS, self.OPTIONAL_OBJECTIVE_KEYS)
        return self.model(inputs["encoder_input_ids"], inputs["decoder_input_ids"], inputs.get("labels"),
                          encoder_lengths=inputs.get("encoder_lengths"), z_loss=self.hparams.z_loss,
                          return_logits=inputs.get("return_logits"))

    def batch_flops(self, inputs: dict[str, torch.Tensor]) -> int:
        b, s = inputs["encoder_input_ids"].shape
        t = inputs["decoder_input_ids"].shape[1]
        return b * training_flops_per_sequence(self.config, s + t, s)
