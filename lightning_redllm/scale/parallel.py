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

from ..nn import Block


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


def precision_param_dtype(precision: str) -> Optional[torch.dtype]:
    """FSDP2's ``param_dtype`` for a Lightning ``Trainer(precision=...)`` value.

    ``bf16-mixed``: the all-gathered (unsharded) parameters are bf16, so each all-gather moves half
    the bytes and the blocks compute on bf16 weights (the fp32 shards stay the optimizer's master
    weights; gradients are reduced in fp32). ``32-true`` and everything else: None (no cast;
    ``bf16-true`` already makes the parameters themselves bf16).
    """
    return torch.bfloat16 if precision == "bf16-mixed" else None


def shard_model(model: nn.Module, mesh=None, *, reshard_after_forward: bool = True,
                param_dtype: Optional[torch.dtype] = None, activation_checkpointing: bool = False) -> nn.Module:
    """FSDP2 over ``mesh`` (1-D data-parallel ``DeviceMesh``, or 2-D for HSDP; None = the default
    process group).

    ``reshard_after_forward`` applies to the blocks only. The root (tied embedding + final norms) is
    left to FSDP's default, which keeps a root's parameters gathered from forward to backward: the
    tied matrix is the first thing backward needs (the output projection), so freeing it after the
    forward would only buy a second all-gather of the largest tensor. It is also what keeps backward
    correct on every torch: a module that reshards after forward relies on a pre-backward hook that
    FSDP registers on the tensors of the module's *output*, and torch 2.11 finds them with
    ``tree_flatten``, which sees nothing inside our ``ModelOutput`` dataclass (2.13 walks dataclasses)
    -- so an explicitly resharded root was never re-gathered and backward read the freed
    embedding (SIGSEGV on CPU). The blocks return plain tensors, so their hooks always fire.

    ``param_dtype`` (e.g. ``torch.bfloat16``, see :func:`precision_param_dtype`) sets FSDP's mixed
    precision: all-gather and compute in that dtype, reduce gradients in fp32, keep fp32 master weights.
    Forward inputs are not cast (``cast_forward_inputs=False``): the residual stream is already in
    ``param_dtype`` (it starts at the embedding), and the RoPE tables a block receives stay fp32, as
    in every other precision setup of this toolkit.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if activation_checkpointing:
        apply_activation_checkpointing(model)
    kwargs = {"mesh": mesh}
    if param_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32,
                                                   cast_forward_inputs=False)
    for module in model.modules():
        if isinstance(module, Block):
            fully_shard(module, reshard_after_forward=reshard_after_forward, **kwargs)
    fully_shard(model, **kwargs)  # root: reshard_after_forward left to FSDP (False for the root)
    return model
