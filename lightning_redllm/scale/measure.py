"""Measuring what autograd saves for backward in a real forward: the check of the planner's activation
model (``plan.saved_activation_bytes``), ``tests/test_plan.py`` runs both side by side."""
from __future__ import annotations

from typing import Any, Callable, Optional


_PARAM_VIEWS = {"ToCopyBackward0", "TBackward0", "TransposeBackward0", "ViewBackward0", "UnsafeViewBackward0",
                "PermuteBackward0", "ExpandBackward0", "AliasBackward0"}


def _saved_kind(t) -> str:
    """What a saved tensor is: ``parameters`` (a parameter or a view of one -- also FSDP2's gathered
    parameters, which are leaf ``nn.Parameter`` objects that ``model.parameters()`` does not list),
    ``weight_copies`` (a cast of a parameter: autocast's bf16 weights, RMSNorm's fp32 scale) or
    ``activations`` (everything else)."""
    fn = t.grad_fn
    if fn is None:
        return "parameters" if (t.is_leaf and t.requires_grad) else "activations"
    cast = False
    while type(fn).__name__ in _PARAM_VIEWS:
        cast = cast or type(fn).__name__ == "ToCopyBackward0"
        nxt = [f for f, _ in fn.next_functions if f is not None]
        if len(nxt) != 1:
            return "activations"
        fn = nxt[0]
    if type(fn).__name__ != "AccumulateGrad":
        return "activations"
    return "weight_copies" if cast else "parameters"


def measure_saved_bytes(model, forward: Callable[[], Any], block_type: Optional[type] = None) -> dict[str, int]:
    """Run ``forward()`` and sum the bytes autograd saves for backward, one count per storage.

    Returns ``activations`` (everything but parameters), ``weight_copies`` (casts of parameters)
    and ``parameters`` (storages of the parameters themselves). With checkpointed blocks the saved
    tensors inside them are hidden by torch's own hooks; pass ``block_type`` to add the tensors each
    block receives as inputs (what checkpointing keeps alive), found by a forward pre-hook.
    Storages are told apart by identity, not address: under FSDP2 a block's gathered parameters are
    freed after it runs, and their address may be reused by a later activation.
    """
    import torch

    from ..nn import AttentionInputs

    params = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: dict[int, tuple[int, str]] = {}
    keep = []  # hold every counted tensor so no storage is freed (and its identity reused) during the forward

    def record(t) -> None:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        st = t.untyped_storage()
        key = st._cdata
        if key in seen or st.nbytes() == 0:
            return
        kind = "parameters" if key in params else _saved_kind(t)
        seen[key] = (st.nbytes(), kind)
        keep.append(t)

    def pack(t):
        record(t)
        return t

    def pre_hook(module, args, kwargs):
        for value in list(args) + list(kwargs.values()):
            if isinstance(value, AttentionInputs):
                for name in ("cos", "sin", "kv_cos", "kv_sin", "mask"):
                    record(getattr(value, name))
            else:
                record(value)

    handles = []
    if block_type is not None:
        handles = [m.register_forward_pre_hook(pre_hook, with_kwargs=True)
                   for m in model.modules() if isinstance(m, block_type)]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = forward()
    finally:
        for h in handles:
            h.remove()
    del out, keep
    totals = {"activations": 0, "weight_copies": 0, "parameters": 0}
    for nbytes, kind in seen.values():
        totals[kind] += nbytes
    return totals


# --------------------------------------------------------------------------- CLI


__all__ = ["measure_saved_bytes"]
