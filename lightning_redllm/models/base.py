"""What both families share: the tied embedding, initialization, input checks and the LM loss.

Shapes: B batch, T decoder/target length, S encoder length, C d_model, V vocab.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, ContextManager, Optional

import torch
from torch import nn

from ..config import ModelConfig
from ..nn import IGNORE_INDEX, KVCache, RMSNorm, RotaryEmbedding, linear_cross_entropy
from ..nn.norm import compute_dtype


@dataclass
class ModelOutput:
    """``logits`` (B, T, V) are returned when asked for or when there are no labels; the loss
    fields are set when labels are given (see ``nn.loss.LossOutput``)."""

    logits: Optional[torch.Tensor] = None
    loss: Optional[torch.Tensor] = None
    nll: Optional[torch.Tensor] = None
    z: Optional[torch.Tensor] = None
    correct: Optional[torch.Tensor] = None
    num_tokens: Optional[torch.Tensor] = None


class LanguageModel(nn.Module):
    """Base of ``DecLLM`` and ``RedLLM``: one embedding matrix serves as every input embedding and
    as the output projection (``logits = h @ E^T``).

    Initialization (``init_weights``): embedding and every input projection ~ N(0, init_std);
    RMSNorm scales = 1; the projections that write into a residual stream (attention ``o_proj``
    of self- and cross-attention, MLP ``down_proj``) ~ N(0, init_std / sqrt(W)), where W counts
    the residual writes of *that* stream (:meth:`residual_streams`): a DecLLM stream gets 2 per
    layer; RedLLM's encoder stream 2 per layer and its decoder stream 3 per layer (self-attention,
    cross-attention, FFN). Each write then adds ~1/W of the same variance, so a stream's variance
    at the top does not grow with its depth (the GPT-2 / OLMo rule, with writes counted per stream).
    """

    #: Check input values (token ids against the vocabulary, encoder lengths) on every forward;
    #: on an accelerator each check costs a device sync (see :meth:`inputs_checked`).
    validate_inputs: bool = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.rope = RotaryEmbedding(config.head_dim, config.rope_theta, config.max_seq_len)

    def rope_tables(self, positions: torch.Tensor, max_position: Optional[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE cos/sin for ``positions`` (B, T): fp32 tables, fp64 for an fp64 model."""
        return self.rope(positions, max_position, dtype=compute_dtype(self.embed.weight.dtype))

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_weights(self, gather: Optional[Callable[[list[nn.Parameter]], ContextManager]] = None) -> None:
        """Initialize every parameter (see the class docstring).

        ``gather``: a context factory that makes a module's own (``recurse=False``) parameters whole
        while they are written — for a model already partitioned at construction (DeepSpeed ZeRO-3:
        ``lambda ps: deepspeed.zero.GatheredParameters(ps, modifier_rank=0)``). Modules are visited
        in one fixed order, so the random draws are the same as for an unpartitioned model.
        """
        cfg = self.config
        std = cfg.init_std
        streams = self.residual_streams()
        for name, module in self.named_modules():
            own = list(module.parameters(recurse=False))
            if not own:
                continue
            with gather(own) if gather is not None else contextlib.nullcontext():
                if module is self.embed:
                    nn.init.normal_(module.weight, mean=0.0, std=std)
                elif isinstance(module, nn.Linear):
                    if name.endswith("o_proj") or name.endswith("down_proj"):
                        writes = streams[name.split(".", 1)[0]]
                        nn.init.normal_(module.weight, mean=0.0, std=std / math.sqrt(writes))
                    else:
                        nn.init.normal_(module.weight, mean=0.0, std=std)
                elif isinstance(module, RMSNorm):
                    module.reset_parameters()

    def residual_streams(self) -> dict[str, int]:
        """Residual writes per stream, keyed by the top-level module holding the stream's blocks."""
        raise NotImplementedError

    def _kv_caches(self, n_layers: int, batch: int, max_len: int, dtype: Optional[torch.dtype],
                   device: Optional[torch.device]) -> list[KVCache]:
        """One self-attention cache per layer, in the model's dtype/device unless given."""
        cfg = self.config
        dtype = dtype or self.embed.weight.dtype
        device = device or self.embed.weight.device
        return [KVCache(batch, cfg.n_kv_heads, cfg.head_dim, max_len, dtype, device) for _ in range(n_layers)]

    # ------------------------------------------------------------------ checks
    def _check_values(self) -> bool:
        """Whether forward reads input *values* (token-id ranges, encoder lengths) on the host.

        Shape and dtype checks are free and always run. Value checks cost a device sync when the
        inputs live on an accelerator, so they are skipped inside a compiled region and inside
        :meth:`inputs_checked` -- the training module checks each batch on the CPU before it is
        moved to the device (``LanguageModelModule.on_before_batch_transfer``) and runs the step there.
        """
        return self.validate_inputs and not torch.compiler.is_compiling()

    @contextlib.contextmanager
    def inputs_checked(self, checked: bool = True):
        """Within this context forward skips its value checks (the caller has run
        :meth:`check_inputs` on the same inputs where that was free, e.g. on the CPU batch)."""
        before = self.__dict__.get("validate_inputs")
        if checked:
            self.validate_inputs = False
        try:
            yield self
        finally:
            if before is None:
                self.__dict__.pop("validate_inputs", None)
            else:
                self.validate_inputs = before

    def _check_ids(self, name: str, ids: torch.Tensor, values: Optional[bool] = None) -> None:
        if not isinstance(ids, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(ids).__name__}")
        if ids.dtype not in (torch.long, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
        if ids.dim() != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
            raise ValueError(f"{name} must have shape (batch, length) with both > 0, got {tuple(ids.shape)}")
        if self._check_values() if values is None else values:
            lo, hi = (int(v) for v in torch.aminmax(ids))
            if lo < 0 or hi >= self.config.vocab_size:
                bad = lo if lo < 0 else hi
                raise ValueError(
                    f"{name} contains token id {bad} outside the model vocabulary [0, {self.config.vocab_size})"
                )

    def _check_labels(self, labels: torch.Tensor, like: torch.Tensor, values: Optional[bool] = None) -> None:
        if labels.shape != like.shape:
            raise ValueError(f"labels shape {tuple(labels.shape)} must equal the input shape {tuple(like.shape)}")
        if labels.dtype != torch.long:
            raise ValueError(f"labels must be torch.long, got {labels.dtype}")
        if self._check_values() if values is None else values:
            bad = labels[(labels != IGNORE_INDEX) & ((labels < 0) | (labels >= self.config.vocab_size))]
            if bad.numel():
                raise ValueError(
                    f"labels contain id {int(bad[0])} outside [0, {self.config.vocab_size}) (use {IGNORE_INDEX} to ignore)"
                )

    def check_inputs(self, *args, **kwargs) -> None:
        """Every check ``forward`` makes on these arguments, value checks included (free on CPU
        tensors). Raises ``ValueError`` naming the bad value."""
        raise NotImplementedError

    # ------------------------------------------------------------------ compile
    def block_lists(self) -> list[nn.ModuleList]:
        """The ModuleLists holding the transformer blocks (each entry a ``Block`` or a wrapper of one)."""
        raise NotImplementedError

    def compile_blocks(self, **compile_kwargs) -> None:
        """``torch.compile`` every block in place (``nn.Module.compile``: parameter names and
        ``state_dict`` keys are unchanged) and the fused output-projection + cross-entropy.

        Each entry of :meth:`block_lists` is compiled as it stands, so a block already wrapped for
        activation checkpointing is compiled together with its recompute. The embedding, the final
        norms and the mask/RoPE setup stay eager (cheap, shape-dependent host logic).
        """
        for blocks in self.block_lists():
            for block in blocks:
                block.compile(**compile_kwargs)
        self.__dict__["_compiled_loss"] = torch.compile(linear_cross_entropy, **compile_kwargs)

    @property
    def is_compiled(self) -> bool:
        return "_compiled_loss" in self.__dict__

    # ------------------------------------------------------------------ head / loss
    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, V) with the tied embedding matrix."""
        return hidden @ self.embed.weight.t()

    def lm_output(self, hidden: torch.Tensor, labels: Optional[torch.Tensor], z_loss: float,
                  return_logits: Optional[bool | str]) -> ModelOutput:
        """Loss terms against ``labels`` and/or logits: ``return_logits`` True (all positions), "last"
        (the last position only, (B, 1, V)), False, or None (logits only when there are no labels)."""
        if return_logits is None:
            return_logits = labels is None
        out = ModelOutput()
        if labels is not None:
            loss_fn = self.__dict__.get("_compiled_loss", linear_cross_entropy)
            res = loss_fn(hidden, self.embed.weight, labels, z_loss=z_loss, chunk=self.config.loss_chunk_tokens)
            out.loss, out.nll, out.z, out.correct, out.num_tokens = res.loss, res.nll, res.z, res.correct, res.num_tokens
        if return_logits == "last":  # generation needs only the last position: no (B, T, V) logits
            out.logits = self.lm_logits(hidden[:, -1:])
        elif return_logits:
            out.logits = self.lm_logits(hidden)
        return out

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
