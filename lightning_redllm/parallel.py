"""Sharding the models with FSDP2 (``torch.distributed.fsdp.fully_shard``), applied from outside.

Each ``Block`` becomes its own FSDP unit (all-gathered just before it runs, freed after), and the
root holds what is left: the tied embedding — used both as the input lookup and as the output
projection inside the root's forward, so one all-gather serves both — and the final norms.
Optional per-block activation checkpointing trades recompute for activation memory.

Used by ``LanguageModelModule.configure_model`` under Lightning's ``ModelParallelStrategy`` (and
usable on its own with a ``DeviceMesh``). Imports only torch.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .nn import Block


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in backward (non-reentrant checkpointing)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl, apply_activation_checkpointing as _apply, checkpoint_wrapper)

    _apply(model, checkpoint_wrapper_fn=lambda m: checkpoint_wrapper(m, checkpoint_impl=CheckpointImpl.NO_REENTRANT),
           check_fn=lambda m: isinstance(m, Block))


def checkpoint_blocks_in_place(model: nn.Module) -> None:
    """Per-block activation checkpointing without new wrapper modules: each ``Block``'s forward is
    replaced (on the instance) by a non-reentrant ``torch.utils.checkpoint`` of itself. Used under
    DeepSpeed ZeRO-3, where ``configure_model`` runs inside ``deepspeed.zero.Init``, which intercepts
    the construction of every new module and breaks ``CheckpointWrapper``'s attribute forwarding
    (infinite recursion). The block's submodules keep their ZeRO-3 gather hooks in the recompute."""
    import functools

    from torch.utils.checkpoint import checkpoint

    def checkpointed(forward, *args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    for module in model.modules():
        if isinstance(module, Block) and not getattr(module, "_checkpointed_in_place", False):
            module.forward = functools.partial(checkpointed, module.forward)
            module._checkpointed_in_place = True


def shard_model(model: nn.Module, mesh=None, *, reshard_after_forward: bool = True,
                param_dtype: Optional[torch.dtype] = None, activation_checkpointing: bool = False) -> nn.Module:
    """FSDP2 over ``mesh`` (1-D data-parallel ``DeviceMesh``; None = the default process group).

    ``param_dtype`` (e.g. ``torch.bfloat16``) sets FSDP's mixed precision: compute in that dtype,
    reduce gradients in fp32, keep fp32 master weights.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if activation_checkpointing:
        apply_activation_checkpointing(model)
    kwargs = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if param_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for module in model.modules():
        if isinstance(module, Block):
            fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)
    return model
