"""Can this process run bf16 attention on the CPU? Checked once, before the first step.

PyTorch dispatches its x86 kernels by CPU capability (AVX-512, AVX2 or the portable default);
``ATEN_CPU_CAPABILITY`` forces a weaker family. On CPUs with AMX (Intel Sapphire Rapids and later)
torch's bf16 flash-attention kernel decides to pack its operands for AMX from the *hardware*, then
calls the packing routine of the *dispatched* kernel family, which under a forced ``avx2`` or
``default`` has none: ``RuntimeError: pack_vnni2 is only supported when avx512 is supported``,
deep inside the first forward. Rather than decide from a CPU model name, we run the operation
itself at the model's head shapes (forward and backward, causal, masked and cross-shaped) and turn
a failure into one line that says what to change.

Imports only torch.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import ConfigError

#: what the user can change, in the order we suggest it
REMEDY = "unset ATEN_CPU_CAPABILITY (let torch pick the CPU's own kernels) or train in fp32 (--trainer.precision 32-true)"


@functools.lru_cache(maxsize=None)
def bf16_attention_problem(n_heads: int, n_kv_heads: int, head_dim: int, seq_len: int = 128) -> Optional[str]:
    """None when bf16 ``scaled_dot_product_attention`` runs forward and backward on this CPU at these
    head shapes (the three forms the models use: causal, boolean mask, cross with another key
    length); else the first line of torch's error."""
    t = max(8, min(int(seq_len), 256))
    g = torch.Generator().manual_seed(0)
    cases = (
        dict(tq=t, tk=t, causal=True, mask=False),  # DecLLM / RedLLM decoder self-attention
        dict(tq=t, tk=t, causal=False, mask=True),  # prefix-LM, padding masks
        dict(tq=max(4, t // 2), tk=t, causal=False, mask=True),  # RedLLM cross-attention
    )
    try:
        for c in cases:
            q = torch.randn(2, n_heads, c["tq"], head_dim, generator=g).bfloat16().requires_grad_()
            k = torch.randn(2, n_kv_heads, c["tk"], head_dim, generator=g).bfloat16().requires_grad_()
            v = torch.randn(2, n_kv_heads, c["tk"], head_dim, generator=g).bfloat16().requires_grad_()
            mask = torch.ones(c["tq"], c["tk"], dtype=torch.bool).tril(c["tk"] - c["tq"]) if c["mask"] else None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=c["causal"],
                                                 enable_gqa=n_heads != n_kv_heads)
            out.float().sum().backward()
    except RuntimeError as err:
        return (str(err).strip().splitlines() or [type(err).__name__])[0]
    return None


def check_bf16_cpu_attention(n_heads: int, n_kv_heads: int, head_dim: int, seq_len: int = 128) -> None:
    """Raise ``ConfigError`` (one line + hint) when bf16 attention cannot run on this CPU."""
    problem = bf16_attention_problem(n_heads, n_kv_heads, head_dim, seq_len)
    if problem is None:
        return
    forced = os.environ.get("ATEN_CPU_CAPABILITY")
    where = (f"with ATEN_CPU_CAPABILITY={forced} (torch dispatches its "
             f"{torch.backends.cpu.get_cpu_capability()} kernels)" if forced else "on this CPU")
    raise ConfigError(f"bf16 attention does not run {where} under torch {torch.__version__}: {problem}",
                      hint=REMEDY)
