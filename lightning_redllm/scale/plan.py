"""Per-GPU memory planner: ``python -m lightning_redllm plan --model redllm-8b --strategy zero3 --gpus 8``.

Pure functions (no GPU, no DeepSpeed needed) that add up, per GPU, the model states (parameters,
gradients, optimizer state), the buffers a strategy needs while it runs, and the activations of
*our* blocks, then find the largest micro-batch (sequences per GPU) that fits. Units: bytes in the
functions, GiB (2**30) in the printout; ``--gpu-mem`` is GiB (an "80 GB" A100/H100 reports
81,559 MiB = 79.6 GiB).

Model states, bytes per parameter (P = parameters, N = GPUs the states are sharded over):

==========================  =======  =====  ==================================  ==========
strategy, precision         params   grads  optimizer (AdamW / our Adafactor)   sharded N
==========================  =======  =====  ==================================  ==========
zero3, bf16-mixed           2 bf16   2 bf16 12 / 8: fp32 master 4 + m 4 + v 4    all GPUs
                                            (Adafactor: master 4 + v 4)
zero3, 32-true              4        4      8 / 4 (no separate master)           all GPUs
fsdp, bf16-mixed / 32-true  4 fp32   4 fp32 8 / 4 (fp32 params are the master)   GPUs/node
ddp,  bf16-mixed / 32-true  4        4      8 / 4                                1
==========================  =======  =====  ==================================  ==========

Why: Lightning's DeepSpeed bf16-mixed casts the module to bf16 and DeepSpeed keeps fp32 master
weights inside its optimizer; under ZeRO-3 DeepSpeed accumulates gradients in the model dtype
(bf16). Under Lightning's ModelParallelStrategy (our FSDP2) the sharded parameters, their gradients
and the optimizer stay fp32; with bf16-mixed ``configure_model`` gives FSDP2 a bf16 ``param_dtype``
(``parallel.precision_param_dtype``), so the all-gathered parameters the blocks compute with are
bf16 and gradients are reduced in fp32. DDP with bf16-mixed keeps fp32 parameters and runs the
forward under Lightning's autocast. Our FSDP mesh shards within a node and replicates across nodes
(``modules.base._fsdp_mesh``), so FSDP states divide by GPUs per node only. ZeRO offload:
``optimizer`` moves master weights, optimizer state and fp32 gradients to CPU (the GPU keeps the
bf16 parameter shard), ``optimizer+params`` moves the bf16 shard too. Our FSDP2 wrapper has no CPU
offload, DDP none either.

Buffers besides the states: ZeRO-3 gathers the tied embedding for the whole forward (an external
parameter of the model) plus the running layer and the prefetch/reduce buckets. FSDP2 holds the
running and the prefetched block unsharded (bf16 with bf16-mixed, else fp32), the running block's
unsharded gradients (param dtype) and their fp32 copy for the reduce-scatter, and the root (tied
embedding) unsharded from forward to backward with its gradient. Lightning runs autocast with
``cache_enabled=False`` (``lightning.pytorch.plugins.precision.MixedPrecision``): no bf16 weight
copy outlives the op that made it, except the copies a linear saves for backward — under DDP with
bf16-mixed and no activation checkpointing a bf16 copy of every block weight (2 B/param,
unsharded), counted with the activations (``ActivationBytes.weight_copies``); with checkpointing
only the running block's copies exist. Under FSDP2 bf16 the linears save the gathered bf16
parameters themselves, whose memory FSDP2 frees after the block and gathers again in backward.

Activations (saved-for-backward bytes per token per block) are derived op by op in
:func:`block_activation_bytes` for three precision modes: ``bf16`` (bf16 weights: DeepSpeed's bf16
module, FSDP2's bf16 all-gathered parameters), ``autocast`` (bf16-mixed with fp32 weights: DDP) and
``fp32``. They are checked against a measurement of the tensors autograd saves
(:func:`lightning_redllm.scale.measure.measure_saved_bytes`, ``tests/test_plan.py``, under the precision plugin Lightning itself
picks, and FSDP2 for the fsdp figures); the transient terms (fused-loss logits chunk, backward
working set, strategy buffers, optimizer-step temporaries) come from reading the code and are not
measured.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from ..config import ModelConfig, num_parameters

GiB = 2 ** 30
STRATEGIES = ("zero3", "fsdp", "ddp")
PRECISIONS = ("bf16-mixed", "32-true")
OPTIMIZERS = ("adamw", "adafactor")
OFFLOADS = ("none", "optimizer", "optimizer+params")
MODES = ("bf16", "autocast", "fp32")

# ZeRO-3 settings of recipes/strategy/zero3.yaml: reduce_bucket_size = d^2 and
# stage3_prefetch_bucket_size = 0.9 d^2 elements; sub_group_size is DeepSpeed's default (the recipe
# passes a config dict, so Lightning's own defaults do not apply): the optimizer steps the flat fp32
# partition in sub-groups of ~1e9 elements, each with an fp32 copy of its gradients.
DS_SUB_GROUP = 1_000_000_000
RESERVE_GIB = 4.0    # CUDA context + cuBLAS workspace (~1 GiB), NCCL buffers (~1-2 GiB), small temporaries
RESERVE_FRAC = 0.05  # allocator fragmentation, as a share of the device


# --------------------------------------------------------------------------- activations
def activation_mode(strategy: str, precision: str) -> str:
    """How tensors are typed during the forward: bf16 weights under ZeRO-3 (bf16 module) and FSDP2
    (bf16 ``param_dtype``), fp32 weights under DDP's autocast; see the module docstring."""
    if precision == "32-true":
        return "fp32"
    return "autocast" if strategy == "ddp" else "bf16"


def _act(mode: str) -> int:
    """Bytes of a matmul output: bf16 in both mixed modes."""
    return 4 if mode == "fp32" else 2


def _prenorm(cfg: ModelConfig, mode: str, consumers: int) -> int:
    """Learned RMSNorm + the inputs its ``consumers`` linears save, per token.

    RMSNorm computes in fp32: it saves its input as fp32 (the input itself when fp32, else an fp32
    copy), rstd (one fp32 per token) and the fp32 normalized tensor (for the weight's gradient).
    The output (input dtype) is saved by the linears: once when they share it (bf16, fp32); under
    autocast every linear casts the fp32 output to bf16 on its own, one copy per consumer.
    """
    c = cfg.d_model
    lin_in = {"bf16": 2 * c, "autocast": 2 * c * consumers, "fp32": 4 * c}[mode]
    return 4 * c + 4 + 4 * c + lin_in


def _kv_side(cfg: ModelConfig, mode: str) -> int:
    """K and V of one attention per key token: parameter-free RMSNorm saves the fp32 K/V (+ rstd
    per head), SDPA saves the rotated K and the normed V. RoPE saves only the shared cos/sin."""
    ckv, g = cfg.n_kv_heads * cfg.head_dim, cfg.n_kv_heads
    norms = 2 * (4 * ckv + 4 * g) if cfg.qkv_norm else 0
    return norms + 2 * _act(mode) * ckv


def _q_side(cfg: ModelConfig, mode: str, sdpa_output_view: bool) -> int:
    """Query side of one attention per query token: Q norm, SDPA's Q, output and logsumexp (flash
    attention: no T x T matrix), the optional per-head output norm and o_proj's input."""
    a, cq, h = _act(mode), cfg.n_heads * cfg.head_dim, cfg.n_heads
    total = (4 * cq + 4 * h if cfg.qkv_norm else 0) + a * cq + a * cq + 4 * h
    if cfg.attn_out_norm:
        # fp32 copy of the output (in fp32 mode that is SDPA's saved output itself) + rstd, and the
        # normed output o_proj saves
        total += (4 * cq if a == 2 else 0) + 4 * h + a * cq
    elif not sdpa_output_view:
        total += a * cq  # (B, H, T, D) output: transpose + reshape copies it for o_proj
    return total


def block_activation_bytes(cfg: ModelConfig, mode: str, *, cross: bool = False, sdpa_output_view: bool = True) -> int:
    """Bytes one block saves for backward per (query) token, without activation checkpointing.

    ``cross``: a RedLLM decoder block (adds the cross-attention's query side; its key side is
    :func:`cross_kv_activation_bytes` per encoder token). Residual adds, dropout (p=0) and RoPE save
    nothing per block; SwiGLU saves gate, silu(gate), up and their product (4 x ffn).

    ``sdpa_output_view``: CUDA's flash kernel writes its output as (B, T, H, D), so without the
    output norm (DecLLM) o_proj's input is a view of the output SDPA already saved; CPU's flash
    kernel writes (B, H, T, D) and the reshape for o_proj copies it (pass False to model CPU).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    total = _prenorm(cfg, mode, 3) + _q_side(cfg, mode, sdpa_output_view) + _kv_side(cfg, mode)
    if cross:
        total += _prenorm(cfg, mode, 1) + _q_side(cfg, mode, sdpa_output_view)
    return total + _prenorm(cfg, mode, 2) + 4 * _act(mode) * cfg.ffn_dim


def cross_kv_activation_bytes(cfg: ModelConfig, mode: str) -> int:
    """Per encoder token and decoder layer: the cross-attention's K/V (under autocast each of
    k_proj/v_proj also saves its own bf16 cast of the fp32 encoder output)."""
    return (4 * cfg.d_model if mode == "autocast" else 0) + _kv_side(cfg, mode)


def _tokens(cfg: ModelConfig, seq_len: int, prefix_len: Optional[int]) -> tuple[int, int]:
    """(encoder tokens, decoder/loss tokens) of one training sequence."""
    if cfg.family == "decllm":
        return 0, seq_len
    p = seq_len // 2 if prefix_len is None else prefix_len
    if not 0 < p < seq_len:
        raise ValueError(f"--prefix-len must be in (0, {seq_len}) for RedLLM, got {p}")
    return p, seq_len - p


@dataclass
class ActivationBytes:
    """Saved-for-backward bytes of a micro-batch of ``batch`` sequences (what
    :func:`lightning_redllm.scale.measure.measure_saved_bytes` measures) and the per-block pieces the peak needs."""

    blocks: int           # all blocks' saved tensors (no checkpointing) or the block inputs (checkpointing)
    model: int            # outside the blocks: ids, RoPE tables, final norms, the loss's dL/dhidden
    loss_grad_w: int      # the loss's dL/dW (vocab x d_model), once per micro-batch
    largest_block: int    # one block's full saved tensors (the recompute unit)
    weight_copies: int = 0  # casts of weights saved for backward, once per micro-batch (no checkpointing):
    #                         autocast's bf16 block matmul weights, bf16 mode's fp32 RMSNorm scales

    @property
    def saved(self) -> int:
        return self.blocks + self.model + self.loss_grad_w + self.weight_copies


def saved_activation_bytes(cfg: ModelConfig, mode: str, *, batch: int, seq_len: int,
                           prefix_len: Optional[int] = None, checkpointing: bool = False,
                           sdpa_output_view: bool = True) -> ActivationBytes:
    """Tensors held for backward after the forward of ``batch`` sequences.

    With per-block checkpointing a block keeps only its input (and the shared encoder output /
    RoPE tables); without, everything :func:`block_activation_bytes` lists.
    """
    s, t = _tokens(cfg, seq_len, prefix_len)
    c, a = cfg.d_model, _act(mode)
    resid = 2 if mode == "bf16" else 4          # residual stream dtype = embedding dtype
    hidden = 2 if mode == "bf16" else 4         # dtype of the final hidden states / loss input
    rope = 4 * cfg.head_dim                     # fp32 cos + sin, (D/2 each) per token, shared by all layers
    final_norm = 4 * c + 4 + 4 * c
    if cfg.family == "decllm":
        full = block_activation_bytes(cfg, mode, sdpa_output_view=sdpa_output_view)
        blocks = cfg.n_layers * t * (resid * c if checkpointing else full)
        largest = t * full
        model = 8 * t + rope * t + final_norm * t + hidden * c * t
    else:
        enc = block_activation_bytes(cfg, mode, sdpa_output_view=sdpa_output_view)
        dec = block_activation_bytes(cfg, mode, cross=True, sdpa_output_view=sdpa_output_view)
        kv = cross_kv_activation_bytes(cfg, mode)
        largest = max(s * enc, t * dec + s * kv)
        if checkpointing:
            blocks = (cfg.n_encoder_layers * s + cfg.n_decoder_layers * t) * resid * c
        else:
            blocks = cfg.n_encoder_layers * s * enc + cfg.n_decoder_layers * (t * dec + s * kv)
        # the encoder output feeds every decoder block: saved by their k/v linears (bf16, fp32)
        # or, with checkpointing, held as a block input; under autocast without checkpointing only
        # its per-layer bf16 casts are saved (counted in cross_kv_activation_bytes)
        enc_out = 0 if (mode == "autocast" and not checkpointing) else hidden * c * s
        # ids of both lookups, RoPE tables for encoder self, decoder and cross-attention keys
        model = 8 * (s + t) + rope * (2 * s + t) + final_norm * (s + t) + enc_out + hidden * c * t
    grad_w = cfg.vocab_size * c * (2 if mode == "bf16" else 4)
    copies = weight_copy_bytes(cfg, mode, checkpointing=checkpointing)
    return ActivationBytes(blocks=batch * blocks, model=batch * model, loss_grad_w=grad_w,
                           largest_block=batch * largest, weight_copies=copies)


def weight_copy_bytes(cfg: ModelConfig, mode: str, *, checkpointing: bool = False, block: bool = False) -> int:
    """Casts of weights one forward saves for backward (``block``: those of the largest block, made
    again when it is recomputed). Under autocast (fp32 weights) each block linear saves the bf16
    cast of its weight, made anew at every call (Lightning's autocast runs with the cast cache off);
    in bf16 mode each learned RMSNorm saves an fp32 copy of its scale. With checkpointing the
    blocks' casts are not kept (only the final norms', outside the blocks). The tied embedding is
    not saved: the fused loss keeps dL/dW instead, and its per-chunk cast is a transient
    (:func:`loss_transient_bytes`)."""
    cross = cfg.family == "redllm"
    if mode == "autocast":
        if block:
            return 2 * _block_params(cfg, cross=cross)[0]
        return 0 if checkpointing else 2 * _all_block_matmul_params(cfg)
    if mode == "bf16":
        if block:
            return 4 * _block_params(cfg, cross=cross)[1]
        final = 4 * cfg.d_model * (2 if cross else 1)
        if checkpointing:
            return final
        if cfg.family == "decllm":
            return final + 4 * cfg.n_layers * _block_params(cfg)[1]
        return final + 4 * (cfg.n_encoder_layers * _block_params(cfg)[1]
                            + cfg.n_decoder_layers * _block_params(cfg, True)[1])
    return 0


def loss_transient_bytes(cfg: ModelConfig, mode: str, loss_tokens: int) -> int:
    """Peak extra memory inside the fused loss's forward (``nn.loss._chunked_loss``): fp32 logits of
    one chunk, the (logits - lse) temporary and the probabilities (12 B x chunk x vocab); with more
    than one chunk the previous chunk's logits and probabilities are still referenced while the
    next bf16 product is cast (+2 B); in bf16 mode the fp32 dL/dW accumulator (4 B x vocab x d);
    under autocast the bf16 cast of the fp32 tied matrix that each chunk's matmul makes (2 B x vocab
    x d; no cast cache, so it is freed after the chunk)."""
    chunk = min(cfg.loss_chunk_tokens, loss_tokens)
    per = 12 + (2 if _act(mode) == 2 and loss_tokens > chunk else 0)
    acc = {"bf16": 4, "autocast": 2, "fp32": 0}[mode] * cfg.vocab_size * cfg.d_model
    return chunk * cfg.vocab_size * per + acc


def activation_peak_bytes(cfg: ModelConfig, mode: str, *, batch: int, seq_len: int,
                          prefix_len: Optional[int] = None, checkpointing: bool = False) -> int:
    """Saved tensors plus the larger of two transients: the fused loss at the end of the forward,
    or in backward the working set of one block (its gradient temporaries, taken as large as its
    saved tensors; with checkpointing also its recomputed activations and weight casts)."""
    act = saved_activation_bytes(cfg, mode, batch=batch, seq_len=seq_len, prefix_len=prefix_len,
                                 checkpointing=checkpointing)
    loss = loss_transient_bytes(cfg, mode, batch * _tokens(cfg, seq_len, prefix_len)[1])
    backward = act.largest_block * (2 if checkpointing else 1)
    if checkpointing:
        backward += weight_copy_bytes(cfg, mode, block=True)
    return act.saved + max(loss, backward)


# --------------------------------------------------------------------------- model states
def _block_params(cfg: ModelConfig, cross: bool = False) -> tuple[int, int]:
    """(matmul params, norm params) of one block."""
    c, cq, ckv = cfg.d_model, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    attn = c * (cq + 2 * ckv) + cq * c
    mats = attn * (2 if cross else 1) + 3 * c * cfg.ffn_dim
    return mats, c * (3 if cross else 2)


def largest_layer_params(cfg: ModelConfig) -> int:
    """DeepSpeed's "largest layer": the module with the most direct parameters (the embedding)."""
    c, cq = cfg.d_model, cfg.n_heads * cfg.head_dim
    return max(cfg.vocab_size * c, c * cfg.ffn_dim, c * cq)


def _largest_block_params(cfg: ModelConfig) -> int:
    return sum(_block_params(cfg, cross=cfg.family == "redllm"))


def _all_block_matmul_params(cfg: ModelConfig) -> int:
    if cfg.family == "decllm":
        return cfg.n_layers * _block_params(cfg)[0]
    return cfg.n_encoder_layers * _block_params(cfg)[0] + cfg.n_decoder_layers * _block_params(cfg, True)[0]


@dataclass
class ModelStates:
    """Per-GPU bytes of one strategy; ``cpu_per_node`` is host memory for offloaded states."""

    params: int
    grads: int
    optimizer: int
    buffers: int          # gathered/unsharded parameters and gradients, gradient buckets
    step_extra: int       # optimizer-step temporaries (activations are freed by then)
    cpu_per_node: int
    notes: list[str] = field(default_factory=list)

    @property
    def persistent(self) -> int:
        return self.params + self.grads + self.optimizer


def model_state_bytes(cfg: ModelConfig, *, strategy: str, precision: str = "bf16-mixed", optimizer: str = "adamw",
                      offload: str = "none", gpus: int = 8, nodes: int = 1) -> ModelStates:
    """Per-GPU model states and strategy buffers (bytes per parameter in the module docstring)."""
    for name, value, choices in (("strategy", strategy, STRATEGIES), ("precision", precision, PRECISIONS),
                                 ("optimizer", optimizer, OPTIMIZERS), ("offload", offload, OFFLOADS)):
        if value not in choices:
            raise ValueError(f"--{name} must be one of {choices}, got {value!r}")
    if gpus < 1 or nodes < 1:
        raise ValueError(f"--gpus and --nodes must be >= 1, got {gpus} and {nodes}")
    if offload != "none" and strategy != "zero3":
        raise ValueError(f"--offload {offload} is a DeepSpeed ZeRO-3 option; our {strategy} setup has no CPU offload")
    p = num_parameters(cfg)
    mixed = precision == "bf16-mixed"
    m_state = 8 if optimizer == "adamw" else 4          # AdamW m + v, Adafactor's unfactored v (fp32)
    # our Adafactor's step on a tensor of n elements allocates ~3 fp32 temporaries (u, step*u and the
    # update); torch's fused AdamW (our default on CUDA) none
    opt_tmp = 12 if optimizer == "adafactor" else 0
    block = _largest_block_params(cfg)
    emb = cfg.vocab_size * cfg.d_model
    notes: list[str] = []
    if strategy == "zero3":
        n = gpus * nodes
        shard = -(-p // n)
        wb = 2 if mixed else 4                          # module dtype
        master = 4 if mixed else 0
        params = 0 if offload == "optimizer+params" else wb * shard
        grads = wb * shard if offload == "none" else 0
        opt = (master + m_state) * shard if offload == "none" else 0
        # gathered params: the tied embedding (an external parameter of the model, kept gathered
        # through the forward), the running linear and the prefetch bucket; gradients: the largest
        # layer's full gradient before it is copied into the reduce bucket, and that bucket
        linear = max(cfg.d_model * cfg.ffn_dim, cfg.d_model * cfg.n_heads * cfg.head_dim)
        d2 = cfg.d_model ** 2
        buffers = wb * (emb + linear + int(0.9 * d2)) + wb * (largest_layer_params(cfg) + d2)
        # step, one sub-group at a time: its gradients in fp32 + our Adafactor's temporaries
        sub = min(shard, DS_SUB_GROUP)
        step_extra = ((4 * sub if mixed else 0) + opt_tmp * sub) if offload == "none" else 0
        cpu = 0
        if offload != "none":
            cpu = (master + m_state + 4 + (wb if offload == "optimizer+params" else 0)) * shard * gpus
            notes.append("ZeRO-Offload with a non-DeepSpeed optimizer needs \"zero_force_ds_cpu_optimizer\": false "
                         "(DeepSpeedCPUAdam for AdamW); the CPU step is much slower")
    else:
        n = gpus if strategy == "fsdp" else 1
        shard = -(-p // n)
        params, grads, opt = 4 * shard, 4 * shard, m_state * shard
        cpu = 0
        step_extra = opt_tmp * (-(-emb // n))          # per parameter tensor: the largest is the embedding
        if strategy == "fsdp":
            # unsharded in the param dtype (bf16 with bf16-mixed): the running block, the prefetched
            # next one and the running block's gradients, plus the fp32 reduce-scatter input they
            # are copied into under bf16; the root (tied embedding) stays unsharded from forward to
            # backward, with its unsharded gradient (and that gradient's fp32 reduce-scatter input)
            pb = 2 if mixed else 4
            reduce_copy = 4 if mixed else 0
            buffers = (3 * pb + reduce_copy) * block + (2 * pb + reduce_copy) * emb
            if mixed:
                notes.append("FSDP2 bf16-mixed: bf16 all-gathers and compute (param_dtype from the trainer's precision), "
                             "fp32 sharded parameters, gradients and gradient reduction")
        else:
            # gradient_as_bucket_view=True: gradients live in DDP's buckets; autocast's weight casts
            # are counted with the activations (saved for backward only without checkpointing)
            buffers = 0
    return ModelStates(params=params, grads=grads, optimizer=opt, buffers=buffers, step_extra=step_extra,
                       cpu_per_node=cpu, notes=notes)


def deepspeed_estimate(cfg: ModelConfig, *, gpus: int, nodes: int, offload: str) -> dict[str, Any]:
    """DeepSpeed's own ZeRO-3 model-states estimate (``estimate_zero3_model_states_mem_needs``), or
    why it is unavailable. It assumes 18 B/param on GPU (16 + 2), 4 B x largest layer for the live
    layer, and zero_init=True; buffer factor 1.5 applies to CPU memory only."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # DeepSpeed prints on import; keep --json clean
            from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    except ImportError:
        return {"available": False, "why": "deepspeed not installed"}
    except Exception as err:  # noqa: BLE001 -- a broken install must not break the planner
        return {"available": False, "why": f"deepspeed import failed ({type(err).__name__})"}
    with contextlib.redirect_stdout(io.StringIO()):
        cpu, gpu, largest = estimate_zero3_model_states_mem_needs(
            total_params=num_parameters(cfg), largest_layer_params=largest_layer_params(cfg),
            num_gpus_per_node=gpus, num_nodes=nodes, cpu_offload=offload != "none",
            cpu_offload_params=offload == "optimizer+params", zero_init=True)
    return {"available": True, "gpu": int(gpu), "cpu_per_node": int(cpu), "largest_layer": int(largest)}


# --------------------------------------------------------------------------- the plan
def reserve_bytes(gpu_mem_gib: float, reserve_gib: float = RESERVE_GIB, reserve_frac: float = RESERVE_FRAC) -> int:
    return int((reserve_gib + reserve_frac * gpu_mem_gib) * GiB)


def plan_rows(cfg: ModelConfig, *, strategy: str, gpus: int, nodes: int, gpu_mem_gib: float, seq_len: int,
              prefix_len: Optional[int] = None, precision: str = "bf16-mixed", optimizer: str = "adamw",
              offloads: Sequence[str] = ("none",), checkpointing: Sequence[bool] = (False, True),
              reserve_gib: float = RESERVE_GIB, reserve_frac: float = RESERVE_FRAC,
              max_batch: int = 65536) -> list[dict[str, Any]]:
    """One row per (offload, checkpointing): per-GPU bytes and the largest micro-batch that fits."""
    mode = activation_mode(strategy, precision)
    budget = int(gpu_mem_gib * GiB) - reserve_bytes(gpu_mem_gib, reserve_gib, reserve_frac)
    _tokens(cfg, seq_len, prefix_len)  # validates prefix_len
    ds = {}
    if strategy == "zero3":
        ds = {o: deepspeed_estimate(cfg, gpus=gpus, nodes=nodes, offload=o) for o in offloads}
    rows = []
    for offload in offloads:
        for ckpt in checkpointing:
            st = model_state_bytes(cfg, strategy=strategy, precision=precision, optimizer=optimizer,
                                   offload=offload, gpus=gpus, nodes=nodes)
            kw = dict(seq_len=seq_len, prefix_len=prefix_len, checkpointing=ckpt)

            def total(b: int) -> int:
                return st.persistent + st.buffers + activation_peak_bytes(cfg, mode, batch=b, **kw)

            fits_step = st.persistent + st.step_extra <= budget
            best = 0
            if fits_step:
                lo, hi = 0, max_batch  # total() grows with b: binary search for the last b that fits
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    lo, hi = (mid, hi) if total(mid) <= budget else (lo, mid - 1)
                best = lo
            per_seq = saved_activation_bytes(cfg, mode, batch=1, **kw)
            rows.append({
                "model": cfg.name, "family": cfg.family, "params": num_parameters(cfg), "strategy": strategy,
                "precision": precision, "activation_mode": mode, "optimizer": optimizer, "offload": offload,
                "activation_checkpointing": ckpt, "gpus_per_node": gpus, "nodes": nodes, "seq_len": seq_len,
                "prefix_len": _tokens(cfg, seq_len, prefix_len)[0] if cfg.family == "redllm" else None,
                "param_bytes": st.params, "grad_bytes": st.grads, "optimizer_bytes": st.optimizer,
                "buffer_bytes": st.buffers, "step_extra_bytes": st.step_extra, "cpu_bytes_per_node": st.cpu_per_node,
                "activation_bytes_per_seq": per_seq.blocks + per_seq.model,
                "activation_bytes_fixed": per_seq.loss_grad_w + per_seq.weight_copies,
                "max_micro_batch": best,
                "peak_bytes": total(best) if best else total(1),
                "step_peak_bytes": st.persistent + st.step_extra,
                "budget_bytes": budget, "gpu_mem_bytes": int(gpu_mem_gib * GiB),
                "deepspeed": ds.get(offload, {"available": False, "why": "n/a (not ZeRO-3)"}),
                "notes": st.notes,
            })
    return rows


def _gib(x: float) -> str:
    return f"{x / GiB:.1f}"


def format_markdown(rows: list[dict[str, Any]], *, reserve_gib: float = RESERVE_GIB,
                    reserve_frac: float = RESERVE_FRAC) -> str:
    """A markdown table (GiB per GPU) plus the assumptions it rests on."""
    r0 = rows[0]
    head = (f"Per-GPU memory plan: {r0['strategy']}, {r0['nodes']} node(s) x {r0['gpus_per_node']} GPUs x "
            f"{r0['gpu_mem_bytes'] / GiB:g} GiB, seq {r0['seq_len']}, {r0['precision']} "
            f"(activations: {r0['activation_mode']}), {r0['optimizer']}. GiB per GPU.")
    cols = ["model", "offload", "act. ckpt", "params", "grads", "optim.", "buffers", "act./seq", "max micro-batch",
            "peak @ max", "step peak", "CPU/node", "DeepSpeed est. (states)"]
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        ds = r["deepspeed"]
        ds_text = _gib(ds["gpu"]) if ds["available"] else ds["why"]
        model = r["model"] + (f" (enc {r['prefix_len']})" if r["prefix_len"] else "")
        lines.append("| " + " | ".join([
            model, r["offload"], "on" if r["activation_checkpointing"] else "off", _gib(r["param_bytes"]),
            _gib(r["grad_bytes"]), _gib(r["optimizer_bytes"]), _gib(r["buffer_bytes"]),
            _gib(r["activation_bytes_per_seq"]), str(r["max_micro_batch"]) if r["max_micro_batch"] else "0 (OOM)",
            _gib(r["peak_bytes"]), _gib(r["step_peak_bytes"]), _gib(r["cpu_bytes_per_node"]), ds_text]) + " |")
    reserve = reserve_bytes(r0["gpu_mem_bytes"] / GiB, reserve_gib, reserve_frac)
    lines += ["", f"Reserve held back: {reserve_gib:g} GiB + {reserve_frac:.0%} of the device = {_gib(reserve)} GiB "
              "(CUDA context, cuBLAS workspace, NCCL buffers, allocator fragmentation, small temporaries); "
              f"budget {_gib(r0['budget_bytes'])} GiB.",
              "Bytes/param: zero3 bf16 = 2 param + 2 grad + 12 AdamW (fp32 master, m, v) or 8 Adafactor (master, v), "
              "sharded over all GPUs; fsdp/ddp = 4 + 4 + 8 (AdamW) or 4 (Adafactor), fsdp sharded per node.",
              "act./seq: tensors saved for backward per sequence (+ once per micro-batch the loss's dL/dW and the "
              "weight casts saved for backward: ddp's bf16 block weights without checkpointing); the peak adds "
              "the fused-loss chunk or one block's recompute and gradient working set.",
              "peak @ max: the modeled memory at that micro-batch, before the reserve.",
              "buffers: gathered params and gradient buckets (zero3), unsharded blocks/root and their gradients "
              "(fsdp); autocast's bf16 weight casts (ddp, no checkpointing) count as activations. "
              "step peak: states + fp32 grads + optimizer temporaries."]
    for note in sorted({n for r in rows for n in r["notes"]}):
        lines.append(f"Note: {note}.")
    return "\n".join(lines)



def parse_offloads(text: str) -> tuple[str, ...]:
    """``--offload`` as given: one value or a comma-separated list (``all`` = every choice), in
    order, without repeats."""
    out: list[str] = []
    for item in (x.strip() for x in text.split(",")):
        if item not in OFFLOADS + ("all",):
            raise ValueError(f"--offload: {item!r} is not one of {', '.join(OFFLOADS + ('all',))} "
                             f"(one value or a comma-separated list, e.g. --offload none,optimizer); got {text!r}")
        out += [o for o in (OFFLOADS if item == "all" else (item,)) if o not in out]
    return tuple(out)


def plan_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m lightning_redllm plan",
        description="Per-GPU memory of training a preset (parameters, gradients, optimizer state, buffers, "
                    "activations) with and without activation checkpointing and offload, and the largest "
                    "micro-batch (sequences per GPU) that fits. Assumptions are printed with the table.")
    p.add_argument("--model", action="append", required=True,
                   help="preset name (redllm-8b, decllm-8b, ...); repeat for one table over several models")
    p.add_argument("--strategy", default="zero3", choices=STRATEGIES)
    p.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpu-mem", type=float, default=80.0, help="memory per GPU in GiB (80 GB H100: 79.6)")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--prefix-len", type=int, default=None, help="RedLLM encoder tokens (default: half)")
    p.add_argument("--precision", default="bf16-mixed", choices=PRECISIONS)
    p.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS)
    p.add_argument("--offload", default=None, metavar="{" + ",".join(OFFLOADS + ("all",)) + "}[,...]",
                   help="ZeRO-3 offload: one value or a comma-separated list, one table row each "
                        "(e.g. none,optimizer; default: all three for zero3, none otherwise)")
    p.add_argument("--activation-checkpointing", default="both", choices=("on", "off", "both"))
    p.add_argument("--reserve-gib", type=float, default=RESERVE_GIB, help="fixed reserve per GPU")
    p.add_argument("--reserve-frac", type=float, default=RESERVE_FRAC, help="reserve as a share of --gpu-mem")
    p.add_argument("--json", action="store_true", help="print the rows as JSON (bytes)")
    a = p.parse_args(list(argv))
    for name in ("gpus", "nodes", "seq_len"):
        if getattr(a, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.gpu_mem <= 0 or a.reserve_gib < 0 or not 0 <= a.reserve_frac < 1:
        raise ValueError("--gpu-mem must be > 0, --reserve-gib >= 0 and --reserve-frac in [0, 1)")
    offloads = parse_offloads(a.offload or ("all" if a.strategy == "zero3" else "none"))
    ckpts = {"off": (False,), "on": (True,), "both": (False, True)}[a.activation_checkpointing]
    rows = []
    for name in a.model:
        cfg = ModelConfig.from_name(name)
        rows += plan_rows(cfg, strategy=a.strategy, gpus=a.gpus, nodes=a.nodes, gpu_mem_gib=a.gpu_mem,
                          seq_len=a.seq_len, prefix_len=a.prefix_len, precision=a.precision, optimizer=a.optimizer,
                          offloads=offloads, checkpointing=ckpts, reserve_gib=a.reserve_gib,
                          reserve_frac=a.reserve_frac)
    if a.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_markdown(rows, reserve_gib=a.reserve_gib, reserve_frac=a.reserve_frac))
    return 0


__all__ = ["activation_mode", "block_activation_bytes", "cross_kv_activation_bytes", "saved_activation_bytes",
           "weight_copy_bytes",
           "activation_peak_bytes", "loss_transient_bytes", "model_state_bytes", "deepspeed_estimate",
           "plan_rows", "format_markdown", "parse_offloads", "plan_main", "ActivationBytes",
           "ModelStates"]
