"""DecLLMModule: decoder-only training — causal LM pretraining, instruction tuning with the loss
on targets only and, optionally, bidirectional attention over the inputs ("DecLLM + BiAttn")."""
from __future__ import annotations

from typing import Any

import torch

from ..config import training_flops_per_sequence
from ..data.objectives import causal_lm, instruct_decoder_only
from ..models import ModelOutput
from .base import LanguageModelModule
from .contract import check_objective_output


class DecLLMModule(LanguageModelModule):
    """Decoder-only LM (causal objective).

    Args:
        bidirectional_prefix: in instruction tuning, let the input tokens attend to each other
            bidirectionally (the study's "DecLLM + BiAttn"); targets stay causal. Recorded in the
            model config (``ModelConfig.bidirectional_prefix``, also settable through ``overrides``),
            so checkpoints generate and score the same way.
        pad_to_multiple: instruction batches are padded to a multiple of this length.
        **kwargs: see :class:`LanguageModelModule`.
    """

    family = "decllm"
    #: what :meth:`objective` returns: a dict with these tensors (and optionally those)
    OBJECTIVE_KEYS = ("input_ids", "labels")
    OPTIONAL_OBJECTIVE_KEYS = ("prefix_lengths",)

    def __init__(self, preset: str = "decllm-tiny", *, bidirectional_prefix: bool = False,
                 pad_to_multiple: int = 64, **kwargs: Any) -> None:
        super().__init__(preset=preset, **kwargs)
        if bidirectional_prefix:
            self.config.bidirectional_prefix = True
        self.pad_to_multiple = pad_to_multiple

    @property
    def bidirectional_prefix(self) -> bool:
        return self.config.bidirectional_prefix

    def objective(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        if "tokens" in batch:
            return causal_lm(batch["tokens"], tok.bos_id)
        return instruct_decoder_only(batch["inputs"], batch["input_lengths"], batch["targets"],
                                     batch["target_lengths"], tok.bos_id, tok.pad_id,
                                     pad_to_multiple=self.pad_to_multiple,
                                     bidirectional_prefix=self.bidirectional_prefix)

    def check_inputs(self, inputs: dict[str, torch.Tensor]) -> bool:
        check_objective_output(self, inputs, self.OBJECTIVE_KEYS, self.OPTIONAL_OBJECTIVE_KEYS)
        self.model.check_inputs(inputs["input_ids"], inputs.get("labels"), prefix_lengths=inputs.get("prefix_lengths"))
        return True

    def forward_batch(self, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        check_objective_output(self, inputs, self.OBJECTIVE_KEYS, self.OPTIONAL_OBJECTIVE_KEYS)
        return self.model(inputs["input_ids"], inputs.get("labels"), prefix_lengths=inputs.get("prefix_lengths"),
                          z_loss=self.hparams.z_loss, return_logits=inputs.get("return_logits"))

    def batch_flops(self, inputs: dict[str, torch.Tensor]) -> int:
        b, t = inputs["input_ids"].shape
        return b * training_flops_per_sequence(self.config, t)
