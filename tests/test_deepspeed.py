"""DeepSpeed ZeRO-3 on CPU with 2 gloo processes (tests/data/ds_cpu.py): the model is partitioned at
construction, training matches plain DDP, the tied embedding stays one matrix through the sharded
checkpoint, and the consolidated weights export, reload and generate like the live model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import deepspeed  # noqa: E402,F401  (a dependency: fail, never skip, when it is missing)
REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def ds_fit(family: str, strategy: str, precision: str, steps: int, root: Path, resume: Path | None = None,
           save_at: int | None = None) -> dict[int, dict]:
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DS_FIT_SAVE_AT": str(save_at or 0)}
    r = subprocess.run([sys.executable, str(REPO / "tests/data/ds_fit.py"), family, strategy, precision, str(steps),
                        str(root)] + ([str(resume)] if resume else []), capture_output=True, text=True, timeout=900,
                       cwd=root.parent, env=env)
    files = sorted(root.glob("result-rank*.json"))
    assert r.returncode == 0 and len(files) == 2, (r.stdout[-2000:], r.stderr[-4000:])
    rows = [json.loads(f.read_text()) for f in files]
    return {row["rank"]: row for row in rows}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """The DDP reference run of a family (3 fp32 steps), made once per module and shared by the ZeRO-3
    comparisons: (per-rank results, run folder)."""
    runs: dict[str, tuple[dict, Path]] = {}

    def get(family: str) -> tuple[dict, Path]:
        if family not in runs:
            root = tmp_path_factory.mktemp(f"ddp-{family}") / "ddp"
            runs[family] = (ds_fit(family, "ddp", "32-true", 3, root), root)
        return runs[family]

    return get


@pytest.mark.parametrize("family, recipe", [("decllm", "zero3"), ("redllm", "zero3"), ("redllm", "zero3-offload")])
def test_zero3_matches_ddp_and_consolidates_one_tied_matrix(family, recipe, tmp_path, ddp_run):
    zero = ds_fit(family, recipe, "32-true", 3, tmp_path / "zero3")
    ddp, ddp_root = ddp_run(family)
    assert zero[0]["partitioned"] and not ddp[0]["partitioned"]
    assert zero[0]["optimizer_offloaded"] == (recipe == "zero3-offload")
    # each rank holds only its shard of the embedding (vocab 4096 x 64 = 262,144 elements in all)
    assert 0 <= zero[0]["local_embed_numel"] < 4096 * 64
    for rank in (0, 1):
        # same data, seed, init and fp32 math; only the order of the gradient reductions differs
        # (reduce-scatter of partitions vs one all-reduce): fp32 rounding, ~1e-6 relative per step
        # after 3 optimizer steps -> 1e-4 absolute on a loss of ~8
        assert zero[rank]["losses"] == pytest.approx(ddp[rank]["losses"], abs=1e-4), (zero[rank], ddp[rank])

    # and a single process trained on the same batches (step i: rank 0's batch i, then rank 1's), the same
    # init and seed: its loss is the mean of the two ranks' (every packed sequence has the same token
    # count), equal up to fp32 reduction order (same 1e-4 bound as above)
    if recipe == "zero3-offload":  # the offload run equals DDP above; one single-process replay per family suffices
        return _check_consolidated(family, tmp_path, zero, ddp_root)
    single_root = tmp_path / "single"
    single_root.mkdir()
    r = subprocess.run([sys.executable, str(REPO / "tests/data/ds_fit.py"), family, "single", "32-true", "3",
                        str(single_root)], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                       env={**os.environ, "DS_FIT_REPLAY": str(tmp_path / "zero3")})
    assert r.returncode == 0, r.stderr[-4000:]
    single = json.loads((single_root / "result-rank0.json").read_text())["losses"]
    pairs = [(a + b) / 2 for a, b in zip(zero[0]["losses"], zero[1]["losses"])]
    assert len(single) == 3 and single == pytest.approx(pairs, abs=1e-4), (single, pairs)
    assert max(abs(a - b) for a, b in zip(zero[0]["losses"], zero[1]["losses"])) > 1e-3  # ranks saw different data
    _check_consolidated(family, tmp_path, zero, ddp_root)


def _check_consolidated(family, tmp_path, zero, ddp_root):
    from lightning_redllm.modules.checkpoint import model_from_checkpoint, read_checkpoint

    ckpt = read_checkpoint(tmp_path / "zero3" / "final.ckpt")
    embeds = [k for k in ckpt.state if "embed" in k or "lm_head" in k]
    assert embeds == ["embed.weight"]  # one matrix for encoder input, decoder input and output
    ddp_state = read_checkpoint(ddp_root / "final.ckpt").state
    assert ckpt.state.keys() == ddp_state.keys()
    for k, v in ddp_state.items():
        # consolidated ZeRO-3 weights equal the DDP run's after the same 3 steps (fp32, see above)
        torch.testing.assert_close(ckpt.state[k].float(), v.float(), atol=1e-4, rtol=1e-3)
    model, cfg, hparams = model_from_checkpoint(tmp_path / "zero3" / "final.ckpt")
    assert cfg.family == family and hparams.get("tokenizer") == "bundled-bpe-4k"
    # the consolidated model generates what the live, partitioned model generated (fp32 both)
    from lightning_redllm.generate import SamplingOptions, generate

    assert generate(model, [[5, 6, 7, 8], [9, 10]], bos_id=1, eos_id=None,
                    options=SamplingOptions(max_new_tokens=6)) == zero[0]["live_tokens"] == zero[1]["live_tokens"]


@pytest.mark.parametrize("family", ["decllm"])  # RedLLM: the bf16 CLI test at the end of this file
def test_zero3_bf16_export_reload_generate(family, tmp_path):
    run = ds_fit(family, "zero3", "bf16-mixed", 3, tmp_path / "bf16")
    losses = run[0]["losses"]
    assert all(torch.isfinite(torch.tensor(losses))) and abs(losses[0] - 8.33) < 0.2  # ln(4096) at init
    out = tmp_path / "model.safetensors"
    e = subprocess.run([sys.executable, "-m", "lightning_redllm", "export", "--ckpt", str(tmp_path / "bf16" / "final.ckpt"),
                        "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert e.returncode == 0, e.stderr[-2000:]
    from lightning_redllm.generate import SamplingOptions, generate
    from lightning_redllm.modules.checkpoint import model_from_checkpoint

    from_dir, _, _ = model_from_checkpoint(tmp_path / "bf16" / "final.ckpt")
    from_file, _, _ = model_from_checkpoint(out)
    for k, v in from_dir.state_dict().items():
        torch.testing.assert_close(from_file.state_dict()[k], v, rtol=0, atol=0)
    opts = SamplingOptions(max_new_tokens=6)
    prompts = [[5, 6, 7, 8], [9, 10]]
    assert generate(from_dir, prompts, bos_id=1, eos_id=None, options=opts) == \
        generate(from_file, prompts, bos_id=1, eos_id=None, options=opts)


# RedLLM with the plain recipe, DecLLM with the offload recipe (both ZeRO-3): each family and each recipe once
@pytest.mark.parametrize("family, recipe", [("redllm", "zero3"), ("decllm", "zero3-offload")])
def test_zero3_resume_continues_exactly(family, recipe, tmp_path):
    """Resume a ZeRO-3 run from its step-2 checkpoint (sharded: weights, optimizer partitions -- on the
    CPU with the offload recipe --, every rank's data position), saved mid-run where ModelCheckpoint
    saves, in a new process to step 5: the same per-step losses as the run that never stopped, and
    the same final weights, bit for bit."""
    full = ds_fit(family, recipe, "bf16-mixed", 5, tmp_path / "full", save_at=2)
    assert (tmp_path / "full" / "step-2.ckpt").is_dir()  # a ZeRO-3 checkpoint folder of per-rank shards
    resumed = ds_fit(family, recipe, "bf16-mixed", 5, tmp_path / "resumed", resume=tmp_path / "full" / "step-2.ckpt")
    assert full[0]["optimizer_offloaded"] == resumed[0]["optimizer_offloaded"] == (recipe == "zero3-offload")
    for rank in (0, 1):
        assert len(resumed[rank]["losses"]) == 3
        assert resumed[rank]["losses"] == full[rank]["losses"][2:], (resumed[rank], full[rank])
    from lightning_redllm.modules.checkpoint import read_checkpoint

    a = read_checkpoint(tmp_path / "full" / "final.ckpt").state
    b = read_checkpoint(tmp_path / "resumed" / "final.ckpt").state
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)


def test_zero3_init_from_loads_every_partitioned_parameter(tmp_path):
    """``init_from`` under ZeRO-3 writes each module's gathered parameters from the file: with no
    training step, the sharded checkpoint consolidates back to exactly the weights it was given."""
    import os

    from lightning_redllm.modules.checkpoint import read_checkpoint, save_safetensors
    from lightning_redllm.models import build_model
    from lightning_redllm.config import ModelConfig

    cfg = ModelConfig.from_name("redllm-tiny", d_model=64, n_heads=2, head_dim=32, ffn_dim=128,
                                n_encoder_layers=1, n_decoder_layers=1)
    torch.manual_seed(123)
    source = build_model(cfg)
    source.init_weights()
    for p in source.parameters():  # not the init the run itself would draw
        p.data += 0.1 * torch.randn_like(p)
    weights = save_safetensors(source, cfg, tmp_path / "source.safetensors", tokenizer="bundled-bpe-4k")
    root = tmp_path / "run"
    root.mkdir()
    r = subprocess.run([sys.executable, str(REPO / "tests/data/ds_fit.py"), "redllm", "zero3", "32-true", "0", str(root)],
                       capture_output=True, text=True, timeout=900, cwd=tmp_path,
                       env={**os.environ, "DS_FIT_INIT_FROM": str(weights)})
    assert r.returncode == 0, r.stderr[-4000:]
    loaded = read_checkpoint(root / "final.ckpt").state
    for k, v in source.state_dict().items():
        torch.testing.assert_close(loaded[k], v, rtol=0, atol=0)


def test_cli_fit_with_the_zero3_offload_recipe_then_export_and_generate(tmp_path):
    """What a user runs: ``python -m lightning_redllm fit --config quickstart --config strategy/zero3-offload``
    (the shipped recipe as it is, bar the CPU shim for the GPU-only strategy and no pinned memory without
    CUDA), 2 processes; then ``export`` of the sharded checkpoint folder and ``generate`` from the file."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "data"), os.environ.get("PYTHONPATH", "")])}
    fit = subprocess.run(
        [sys.executable, "-m", "lightning_redllm", "fit", "--config", "quickstart", "--config", "strategy/zero3-offload",
         "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.precision", "bf16-mixed",
         "--trainer.strategy.class_path", "ds_cpu.CPUDeepSpeedStrategy",
         "--trainer.strategy.init_args.config.zero_optimization.offload_optimizer.pin_memory", "false",
         "--trainer.strategy.init_args.config.zero_optimization.reduce_bucket_size", "4096",
         "--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "2",
         "--trainer.default_root_dir", str(run)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert fit.returncode == 0, fit.stderr[-4000:]
    assert "step 2/2" in fit.stderr + fit.stdout
    folder = run / "checkpoints" / "last.ckpt"
    shards = sorted(p.name for p in (folder / "checkpoint").iterdir())
    # one optimizer partition per rank (bf16 mixed precision: DeepSpeed prefixes the files with bf16_)
    assert [s for s in shards if "optim_states" in s] == ["bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
                                                        "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    # the dotted flags changed those two keys and kept the rest of the recipe's DeepSpeed config
    ds_config = torch.load(folder / "checkpoint" / "zero_pp_rank_0_mp_rank_00_model_states.pt", weights_only=True,
                           map_location="cpu")["ds_config"]["zero_optimization"]
    assert ds_config["stage"] == 3 and ds_config["reduce_bucket_size"] == 4096 and ds_config["overlap_comm"] is True
    assert ds_config["offload_optimizer"] == {"device": "cpu", "pin_memory": False}
    out = tmp_path / "model.safetensors"
    e = subprocess.run([sys.executable, "-m", "lightning_redllm", "export", "--ckpt", str(folder), "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert e.returncode == 0, e.stderr[-2000:]
    from lightning_redllm.modules.checkpoint import model_from_checkpoint, read_checkpoint

    consolidated = read_checkpoint(folder).state
    assert [k for k in consolidated if "embed" in k] == ["embed.weight"]  # still one tied matrix
    model, cfg, hparams = model_from_checkpoint(out)
    assert cfg.family == "redllm" and hparams["tokenizer"] == "bundled-bpe-4k"
    for k, v in consolidated.items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    g = subprocess.run([sys.executable, "-m", "lightning_redllm", "generate", "--ckpt", str(out), "--prompt", "The",
                        "--max_new_tokens", "5", "--json"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert g.returncode == 0, g.stderr[-2000:]
    from lightning_redllm.generate import SamplingOptions, generate_text
    from lightning_redllm.tokenizer import load_tokenizer

    expected = generate_text(model, load_tokenizer("bundled-bpe-4k"), ["The"], options=SamplingOptions(max_new_tokens=5))
    assert [row["output"] for row in json.loads(g.stdout)] == expected
