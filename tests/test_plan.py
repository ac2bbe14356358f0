"""The memory planner: activation formula vs the tensors autograd really saves, model-state byte
counts per strategy, the micro-batch search, DeepSpeed's estimator column and the CLI."""
from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from lightning_redllm.config import ModelConfig, num_parameters
from lightning_redllm.models import build_model
from lightning_redllm.nn import Block
from lightning_redllm.scale.parallel import apply_activation_checkpointing, precision_param_dtype, shard_model
from lightning_redllm.scale.measure import measure_saved_bytes
from lightning_redllm.scale.plan import (GiB, activation_mode, activation_peak_bytes, block_activation_bytes,
                                         cross_kv_activation_bytes, deepspeed_estimate, model_state_bytes, plan_main,
                                         plan_rows, saved_activation_bytes, weight_copy_bytes)

B, SEQ, PREFIX = 2, 48, 20  # RedLLM: 20 encoder + 28 decoder tokens (unequal, so S/T mix-ups show)

# Tolerance of the whole-model comparison: none (TOL = 0 bytes). On CPU the formula reproduces the measurement to
# the byte (torch 2.13, the flash kernel forced, no padding). What it leaves out does not occur in
# these forwards: padding masks (B x T x S bools, not used in packed pretraining), dropout masks
# (p > 0, instruction tuning), and on CUDA two philox scalars per attention (empty at p = 0). A
# change in what torch saves, or in our blocks, must show up here and be put into the formula.
TOL = 0


def _cfg(family: str, **kw) -> ModelConfig:
    # d_model != n_heads * head_dim and ffn unrelated to both, so every coefficient is tested apart
    base = dict(family=family, vocab_size=512, d_model=96, n_heads=4, head_dim=16, ffn_dim=160,
                n_layers=2, n_encoder_layers=2, n_decoder_layers=2, max_seq_len=64)
    base.update(kw)
    return ModelConfig(**base)


@functools.lru_cache(maxsize=None)
def _lightning_trainer(strategy: str, precision: str):
    """The Trainer Lightning builds for this strategy and precision (CPU, one device): its precision
    plugin is the one a real run trains under (``MixedPrecision`` runs autocast with the cast cache
    off), and ``configure_model`` reads ``trainer.precision``."""
    import lightning as L
    from lightning.pytorch.strategies import ModelParallelStrategy

    return L.Trainer(accelerator="cpu", devices=1, precision=precision, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False,
                     strategy=ModelParallelStrategy() if strategy == "fsdp" else "auto")


@contextlib.contextmanager
def _one_rank_process_group():
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _measure(cfg: ModelConfig, mode: str, checkpointing: bool = False, backend=SDPBackend.FLASH_ATTENTION):
    """Measured saved bytes of one forward with labels. ``mode``: ``bf16`` (the module in bf16, no
    autocast: what DeepSpeed's engine does under bf16-mixed; Lightning's DeepSpeed plugin adds no
    autocast), ``autocast`` (fp32 weights under the precision plugin Lightning picks for bf16-mixed:
    DDP), ``fp32``, or ``fsdp`` (FSDP2 as ``configure_model`` applies it under ModelParallelStrategy
    with bf16-mixed, on a one-rank gloo group, under that strategy's Lightning precision plugin).
    ``backend``: the CPU flash kernel saves what CUDA's flash kernel saves (q, k, v, output, fp32
    logsumexp); the default forces it so a silent fallback to the math path (which keeps the T x S
    probabilities) fails loudly instead."""
    model = build_model(cfg)
    model.init_weights()
    group = contextlib.nullcontext()
    amp = contextlib.nullcontext()
    if mode == "bf16":
        model = model.to(torch.bfloat16)
    elif mode == "autocast":
        amp = _lightning_trainer("ddp", "bf16-mixed").strategy.precision_plugin.train_step_context()
    elif mode == "fsdp":
        trainer = _lightning_trainer("fsdp", "bf16-mixed")
        amp = trainer.strategy.precision_plugin.train_step_context()
        group = _one_rank_process_group()
    if checkpointing and mode != "fsdp":
        apply_activation_checkpointing(model)
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(0, cfg.vocab_size, (B, n), generator=g)  # noqa: E731
    if cfg.family == "decllm":
        args = (ids(SEQ), ids(SEQ))
        run = lambda: model(args[0], labels=args[1])  # noqa: E731
    else:
        args = (ids(PREFIX), ids(SEQ - PREFIX), ids(SEQ - PREFIX))
        run = lambda: model(args[0], args[1], labels=args[2])  # noqa: E731
    with group:
        if mode == "fsdp":
            shard_model(model, param_dtype=precision_param_dtype(trainer.precision), activation_checkpointing=checkpointing)
        with sdpa_kernel([backend]), amp:
            return measure_saved_bytes(model, run, block_type=Block if checkpointing else None)


def _formula(cfg, mode, checkpointing=False):
    # CPU's flash kernel returns (B, H, T, D): DecLLM's o_proj then saves a copy CUDA does not make
    return saved_activation_bytes(cfg, mode, batch=B, seq_len=SEQ, prefix_len=PREFIX, checkpointing=checkpointing,
                                  sdpa_output_view=False)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["no_ckpt", "ckpt"])
@pytest.mark.parametrize("mode", ["bf16", "autocast", "fp32", "fsdp"])
@pytest.mark.parametrize("family", ["decllm", "redllm"])
def test_activation_formula_matches_saved_tensors(family, mode, checkpointing):
    """Everything saved for backward but the parameters themselves: activations and weight casts.
    FSDP2 with bf16-mixed is the planner's ``bf16`` mode (what ``activation_mode`` says)."""
    cfg = _cfg(family)
    measured = _measure(cfg, mode, checkpointing)
    formula = _formula(cfg, activation_mode("fsdp", "bf16-mixed") if mode == "fsdp" else mode, checkpointing)
    assert abs(measured["activations"] - (formula.saved - formula.weight_copies)) <= TOL, (measured, formula)
    assert measured["weight_copies"] == formula.weight_copies, (measured, formula)


@pytest.mark.parametrize("mode", ["bf16", "autocast", "fp32"])
def test_block_terms_exactly_one_layer_apart(mode):
    """Adding one layer adds exactly the per-block terms (model-level terms cancel)."""
    d1, d2 = (_measure(_cfg("decllm", n_layers=n), mode)["activations"] for n in (1, 2))
    cpu = dict(sdpa_output_view=False)  # see _formula
    assert d2 - d1 == B * SEQ * block_activation_bytes(_cfg("decllm"), mode, **cpu)
    e1, e2 = (_measure(_cfg("redllm", n_encoder_layers=n), mode)["activations"] for n in (1, 2))
    assert e2 - e1 == B * PREFIX * block_activation_bytes(_cfg("redllm"), mode, **cpu)
    r1, r2 = (_measure(_cfg("redllm", n_decoder_layers=n), mode)["activations"] for n in (1, 2))
    cfg = _cfg("redllm")
    assert r2 - r1 == B * ((SEQ - PREFIX) * block_activation_bytes(cfg, mode, cross=True, **cpu)
                           + PREFIX * cross_kv_activation_bytes(cfg, mode))


def test_weight_copies_saved_by_autocast_and_bf16_norms():
    """Lightning's autocast saves a bf16 copy of every block matmul weight when the blocks are not
    checkpointed; pure bf16 saves fp32 copies of the RMSNorm scales; fp32 none; FSDP2 with its bf16
    parameter policy none of the matmul weights (its linears save the gathered bf16 parameters)."""
    cfg = _cfg("redllm")
    model = build_model(cfg)
    norms = sum(p.numel() for n, p in model.named_parameters() if n.endswith("norm.weight"))
    mats = sum(p.numel() for n, p in model.named_parameters() if n.endswith("proj.weight"))
    assert _measure(cfg, "autocast")["weight_copies"] == 2 * mats == weight_copy_bytes(cfg, "autocast")
    assert _measure(cfg, "autocast", checkpointing=True)["weight_copies"] == 0  # recomputed in backward instead
    assert _measure(cfg, "bf16")["weight_copies"] == 4 * norms == weight_copy_bytes(cfg, "bf16")
    assert _measure(cfg, "fsdp")["weight_copies"] == 4 * norms
    assert _measure(cfg, "fp32")["weight_copies"] == 0


def test_lightning_autocast_keeps_no_weight_cast_cache():
    """Why neither fsdp nor ddp holds a bf16 copy of every weight through the forward: Lightning's
    autocast runs with ``cache_enabled=False``, so the same fp32 parameter used twice is cast twice
    (a cached cast would be one storage, reused) and nothing keeps a cast once its op is done."""
    lin = torch.nn.Linear(8, 8, bias=False)
    x = torch.randn(2, 8, requires_grad=True)
    casts = []

    def pack(t):
        if t.dtype == torch.bfloat16 and t.shape == (8, 8):
            casts.append(t.untyped_storage()._cdata)
        return t

    amp = _lightning_trainer("fsdp", "bf16-mixed").strategy.precision_plugin.train_step_context()
    with amp, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lin(x), lin(x)
    assert len(casts) == 2 and casts[0] != casts[1]
    cfg = ModelConfig.from_name("decllm-8b")
    mats = cfg.n_layers * (4 * cfg.d_model ** 2 + 3 * cfg.d_model * cfg.ffn_dim)
    block = 4 * cfg.d_model ** 2 + 3 * cfg.d_model * cfg.ffn_dim
    emb = cfg.vocab_size * cfg.d_model
    # FSDP2 bf16: running + prefetched block and the running block's gradient in bf16 (2 B each) + the
    # gradient's fp32 reduce-scatter input; the root's bf16 embedding and its gradient (+ fp32 copy)
    fsdp = model_state_bytes(cfg, strategy="fsdp", gpus=8)
    assert fsdp.buffers == (3 * 2 + 4) * (block + 2 * cfg.d_model) + (2 * 2 + 4) * emb
    assert fsdp.buffers < mats  # the former figure charged 2 B x every block weight on top
    assert model_state_bytes(cfg, strategy="fsdp", gpus=8, precision="32-true").buffers == \
        3 * 4 * (block + 2 * cfg.d_model) + 2 * 4 * emb
    assert model_state_bytes(cfg, strategy="ddp", gpus=8).buffers == 0
    ddp = dict(batch=1, seq_len=2048)
    assert saved_activation_bytes(cfg, "autocast", **ddp).weight_copies == 2 * mats
    assert saved_activation_bytes(cfg, "autocast", checkpointing=True, **ddp).weight_copies == 0
    assert activation_mode("fsdp", "bf16-mixed") == "bf16" and activation_mode("ddp", "bf16-mixed") == "autocast"


def test_math_attention_exceeds_the_flash_formula():
    """The formula assumes flash attention (q, k, v, output, logsumexp). The math path saves the
    B x H x T x T probabilities instead of output and logsumexp: the measurement must see that
    (here the probabilities are 2 x larger than what they replace, so the excess is > half of them)."""
    cfg = _cfg("decllm")
    math = _measure(cfg, "fp32", backend=SDPBackend.MATH)["activations"]
    probs = cfg.n_layers * B * cfg.n_heads * SEQ * SEQ * 4
    assert math - _formula(cfg, "fp32").saved > probs / 2


def test_checkpointing_cuts_activations_and_grows_with_depth():
    cfg = ModelConfig.from_name("decllm-8b")
    full = saved_activation_bytes(cfg, "bf16", batch=1, seq_len=2048, checkpointing=False)
    ckpt = saved_activation_bytes(cfg, "bf16", batch=1, seq_len=2048, checkpointing=True)
    # 8B DecLLM, bf16: 40 C + 8 F + 16 H + 8 bytes per token and block, 2 C with checkpointing
    assert full.blocks == 32 * 2048 * (40 * 4096 + 8 * 16384 + 16 * 32 + 8)
    assert ckpt.blocks == 32 * 2048 * 2 * 4096
    assert activation_peak_bytes(cfg, "bf16", batch=1, seq_len=2048, checkpointing=True) < full.saved


@pytest.mark.parametrize("name", ["redllm-8b", "decllm-8b"])
def test_model_state_bytes_per_parameter(name):
    cfg = ModelConfig.from_name(name)
    p = num_parameters(cfg)
    per_gpu = lambda **kw: model_state_bytes(cfg, gpus=8, **kw).persistent  # noqa: E731
    close = lambda got, bpp, n: abs(got - bpp * p / n) <= bpp  # noqa: E731 -- shards round up
    assert close(per_gpu(strategy="zero3"), 16, 8)
    assert close(per_gpu(strategy="zero3", optimizer="adafactor"), 12, 8)
    assert close(per_gpu(strategy="zero3", nodes=2), 16, 16)
    assert close(per_gpu(strategy="zero3", offload="optimizer"), 2, 8)
    assert per_gpu(strategy="zero3", offload="optimizer+params") == 0
    assert close(per_gpu(strategy="zero3", precision="32-true"), 16, 8)
    assert close(per_gpu(strategy="zero3", precision="32-true", optimizer="adafactor"), 12, 8)
    assert close(per_gpu(strategy="fsdp", nodes=2), 16, 8)   # HSDP: sharded within a node only
    assert per_gpu(strategy="ddp") == 16 * p
    off = model_state_bytes(cfg, strategy="zero3", gpus=8, offload="optimizer")
    assert close(off.cpu_per_node, 16 * 8, 8)  # fp32 master + m + v + fp32 grads of the node's 8 shards
    with pytest.raises(ValueError, match="offload"):
        model_state_bytes(cfg, strategy="fsdp", offload="optimizer")


def test_micro_batch_is_the_largest_that_fits():
    cfg = ModelConfig.from_name("redllm-8b")
    rows = plan_rows(cfg, strategy="zero3", gpus=8, nodes=1, gpu_mem_gib=80, seq_len=2048)
    no_ckpt, ckpt = rows
    assert 0 < no_ckpt["max_micro_batch"] < ckpt["max_micro_batch"]
    for r in rows:
        st = r["param_bytes"] + r["grad_bytes"] + r["optimizer_bytes"] + r["buffer_bytes"]
        peak = lambda b: st + activation_peak_bytes(  # noqa: E731
            cfg, "bf16", batch=b, seq_len=2048, checkpointing=r["activation_checkpointing"])
        assert peak(r["max_micro_batch"]) <= r["budget_bytes"] < peak(r["max_micro_batch"] + 1)
        assert r["budget_bytes"] == 80 * GiB - int((4 + 0.05 * 80) * GiB)
    ddp = plan_rows(ModelConfig.from_name("decllm-8b"), strategy="ddp", gpus=8, nodes=1, gpu_mem_gib=80, seq_len=2048)
    assert all(r["max_micro_batch"] == 0 for r in ddp)  # 16 B x 8.7B replicated cannot fit


def test_deepspeed_missing_is_reported_not_raised(monkeypatch):
    for name in list(sys.modules):  # make `from deepspeed... import` fail even if imported before
        if name == "deepspeed" or name.startswith("deepspeed."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    out = deepspeed_estimate(ModelConfig.from_name("redllm-8b"), gpus=8, nodes=1, offload="none")
    assert out == {"available": False, "why": "deepspeed not installed"}


def test_deepspeed_estimate_is_deepspeeds_own_number():
    pytest.importorskip("deepspeed.runtime.zero.stage3")
    cfg = ModelConfig.from_name("decllm-8b")
    p, largest = num_parameters(cfg), cfg.vocab_size * cfg.d_model
    out = deepspeed_estimate(cfg, gpus=8, nodes=2, offload="none")
    assert out["gpu"] == 4 * largest + int(18 * p / 16)  # DeepSpeed's 18 B/param + 4 B x largest layer
    assert deepspeed_estimate(cfg, gpus=8, nodes=2, offload="optimizer+params")["gpu"] == 4 * largest


def test_plan_text_states_reserve_and_bytes(capsys):
    assert plan_main(["--model", "decllm-1b", "--strategy", "fsdp", "--gpus", "4", "--gpu-mem", "40"]) == 0
    text = capsys.readouterr().out
    assert "Reserve held back: 4 GiB + 5% of the device = 6.0 GiB" in text
    assert "| decllm-1b | none | off |" in text and "| decllm-1b | none | on |" in text
    assert "n/a (not ZeRO-3)" in text


def test_cli_entry_point_json():
    cmd = [sys.executable, "-m", "lightning_redllm", "plan", "--model", "redllm-8b", "--model", "decllm-8b",
           "--strategy", "zero3", "--gpus", "8", "--nodes", "2", "--gpu-mem", "80", "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert len(rows) == 2 * 3 * 2  # models x offloads x checkpointing
    expected = plan_rows(ModelConfig.from_name("decllm-8b"), strategy="zero3", gpus=8, nodes=2, gpu_mem_gib=80,
                         seq_len=2048, offloads=("optimizer",), checkpointing=(True,))[0]
    got = [r for r in rows
           if r["model"] == "decllm-8b" and r["offload"] == "optimizer" and r["activation_checkpointing"]]
    assert got[0]["max_micro_batch"] == expected["max_micro_batch"] > 0
    assert got[0]["param_bytes"] == expected["param_bytes"]


def test_cli_user_error_is_one_line(capsys):
    from lightning_redllm.__main__ import main

    assert main(["plan", "--model", "decllm-8b", "--strategy", "fsdp", "--offload", "optimizer"]) != 0
    err = capsys.readouterr().err.strip()
    assert "--offload optimizer is a DeepSpeed ZeRO-3 option" in err and "Traceback" not in err


def test_cli_offload_takes_the_readme_list():
    """The README's spelling ``--offload none,optimizer`` (issue 18 item 5): one row per listed value,
    in order; an unknown value is one line naming the flag and the value, not argparse's usage dump."""
    base = [sys.executable, "-m", "lightning_redllm", "plan", "--model", "decllm-1b", "--strategy", "zero3",
            "--activation-checkpointing", "on"]
    res = subprocess.run(base + ["--offload", "none,optimizer", "--json"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert [r["offload"] for r in json.loads(res.stdout)] == ["none", "optimizer"]
    bad = subprocess.run(base + ["--offload", "none,gpu"], capture_output=True, text=True, timeout=120)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode != 0 and bad.stdout == "" and len(lines) == 1, bad.stderr
    assert "--offload" in lines[0] and "'gpu'" in lines[0] and "none,optimizer" in lines[0]
