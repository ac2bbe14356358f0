"""A user's own objective, kept outside the library: RedLLM with T5-style span corruption.

Used by tests/test_training.py through `--model.class_path user_objective.SpanCorruptionRedLLM`
to show that a new objective needs one overridden method and no edit to lightning_redllm.
"""
from __future__ import annotations

import torch

from lightning_redllm.modules import RedLLMModule


class SpanCorruptionRedLLM(RedLLMModule):
    """Each packed sequence: one span of ``span_len`` tokens per ``every`` tokens is cut out of the
    encoder input (replaced by a single sentinel id); the decoder predicts the removed spans."""

    def __init__(self, *args, span_len: int = 3, every: int = 16, sentinel_id: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.span_len, self.every, self.sentinel_id = span_len, every, sentinel_id

    def objective(self, batch):
        if "tokens" not in batch:
            return super().objective(batch)
        tokens = batch["tokens"]  # (B, L)
        b, length = tokens.shape
        pos = torch.arange(length, device=tokens.device)
        in_span = (pos % self.every) < self.span_len  # (L,) same pattern for every row
        starts = (pos % self.every) == 0
        keep_enc = ~in_span | starts  # first token of each span becomes the sentinel
        enc = torch.where(starts, torch.full_like(tokens, self.sentinel_id), tokens)[:, keep_enc]
        targets = tokens[:, in_span]  # (B, n_span_tokens)
        bos = torch.full((b, 1), self.tokenizer.bos_id, dtype=tokens.dtype, device=tokens.device)
        return {"encoder_input_ids": enc, "decoder_input_ids": torch.cat([bos, targets[:, :-1]], dim=1),
                "labels": targets}
