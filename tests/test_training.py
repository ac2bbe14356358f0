"""Training: both families through the Python API and the CLI, exact resume, pretrain -> instruct,
a user-defined objective, recipe errors."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_redllm.data import InstructDataModule, PretrainDataModule
from lightning_redllm.modules import DecLLMModule, RedLLMModule

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(d_model=64, n_heads=2, head_dim=32, ffn_dim=128, n_layers=2, n_encoder_layers=1, n_decoder_layers=1)


def module(family: str, **kw):
    cls = RedLLMModule if family == "redllm" else DecLLMModule
    kw.setdefault("overrides", SMALL)
    kw.setdefault("warmup_steps", 2)
    return cls(preset=f"{family}-tiny", **kw)


def trainer(tmp_path, steps, **kw) -> L.Trainer:
    kw.setdefault("logger", False)
    kw.setdefault("enable_checkpointing", False)
    return L.Trainer(accelerator="cpu", devices=1, max_steps=steps, default_root_dir=tmp_path,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     limit_val_batches=0, **kw)


@pytest.mark.parametrize("family", ["redllm", "decllm"])
def test_loss_drops_on_a_repeated_batch(family, tmp_path):
    L.seed_everything(0)
    dm = PretrainDataModule(seq_len=64, batch_size=4, num_workers=0)
    batch = next(iter(dm.train_dataloader()))
    loader = torch.utils.data.DataLoader([0] * 40, batch_size=1, collate_fn=lambda _: batch)
    m = module(family, lr=1e-2, schedule="constant", z_loss=0.0)
    first = {}

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            first.setdefault("start", float(outputs["loss"]))
            first["end"] = float(outputs["loss"])

    trainer(tmp_path, 40, callbacks=[Record()]).fit(m, train_dataloaders=loader)
    assert first["end"] < 0.5 * first["start"], first


def _weights(m):
    return {k: v.detach().clone() for k, v in m.model.state_dict().items()}


@pytest.mark.parametrize("family", ["redllm", "decllm"])
def test_exact_resume_with_two_workers(family, tmp_path):
    """fit 8 steps with a checkpoint at 4; resume from it to 8 -> same weights and losses."""
    def run(root, steps, ckpt_path=None, save_at=None):
        L.seed_everything(7)
        dm = PretrainDataModule(seq_len=64, batch_size=4, num_workers=2, shuffle_buffer=32)
        m = module(family)
        losses = []

        class Record(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                losses.append((trainer.global_step, float(outputs["loss"])))

        cbs = [Record()]
        if save_at:
            cbs.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=root, every_n_train_steps=save_at, save_top_k=-1))
        t = trainer(root, steps, callbacks=cbs, deterministic=True, enable_checkpointing=bool(save_at))
        t.fit(m, datamodule=dm, ckpt_path=ckpt_path)
        return _weights(m), losses

    full_w, full_losses = run(tmp_path / "a", 8, save_at=4)
    ckpt = tmp_path / "a" / "epoch=0-step=4.ckpt"
    assert ckpt.exists()
    resumed_w, resumed_losses = run(tmp_path / "b", 8, ckpt_path=str(ckpt))
    assert resumed_losses == full_losses[4:]
    for k in full_w:
        torch.testing.assert_close(resumed_w[k], full_w[k], rtol=0, atol=0)


def test_pretrain_then_instruct_via_init_from(tmp_path):
    L.seed_everything(0)
    pre = module("redllm")
    t = trainer(tmp_path, 3)
    t.fit(pre, datamodule=PretrainDataModule(seq_len=64, batch_size=4, num_workers=0))
    ckpt = tmp_path / "pre.ckpt"
    t.save_checkpoint(ckpt)

    inst = module("redllm", init_from=str(ckpt), overrides={**SMALL, "dropout": 0.05}, z_loss=0.0,
                  schedule="constant")
    inst.configure_model()
    for k, v in pre.model.state_dict().items():
        torch.testing.assert_close(inst.model.state_dict()[k], v)
    dm = InstructDataModule(batch_size=4, num_workers=0, max_input_len=128, max_target_len=64)
    batch = next(iter(dm.train_dataloader()))
    mb = inst.objective(batch)
    # loss only on targets: labels are exactly the (eos-terminated) targets, -100 on padding
    for i in range(4):
        n = int(batch["target_lengths"][i])
        assert mb["labels"][i, :n].tolist() == batch["targets"][i, :n].tolist()
        assert (mb["labels"][i, n:] == -100).all()
        assert mb["labels"][i, n - 1] == inst.tokenizer.eos_id
    trainer(tmp_path, 3).fit(inst, datamodule=dm)

    # the other family's checkpoint is refused with the file named
    dec = module("decllm", init_from=str(ckpt))
    with pytest.raises(ValueError, match=r"pre\.ckpt.*family"):
        dec.configure_model()


def test_decllm_instruct_masks_inputs_and_can_attend_bidirectionally():
    m = module("decllm", bidirectional_prefix=True)
    dm = InstructDataModule(batch_size=3, num_workers=0, max_input_len=64, max_target_len=32)
    batch = next(iter(dm.train_dataloader()))
    mb = m.objective(batch)
    for i in range(3):
        n_in, n_t = int(batch["input_lengths"][i]), int(batch["target_lengths"][i])
        assert (mb["labels"][i, :n_in] == -100).all()
        assert mb["labels"][i, n_in:n_in + n_t].tolist() == batch["targets"][i, :n_t].tolist()
        assert int(mb["prefix_lengths"][i]) == n_in + 1
    assert mb["input_ids"].shape[1] % 64 == 0


def _cli(args, cwd, env_extra=None, timeout=300):
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'tests' / 'data'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "lightning_redllm", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


FAST = ["--trainer.max_steps", "4", "--trainer.val_check_interval", "2", "--data.init_args.seq_len", "64",
        "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0", "--data.init_args.val_batches", "2",
        "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1"]


@pytest.mark.parametrize("family", ["redllm", "decllm"])
def test_cli_fit_then_generate(family, tmp_path):
    extra = [] if family == "redllm" else ["--config", str(REPO / "recipes/model/decllm-tiny.yaml")]
    r = _cli(["fit", "--config", str(REPO / "recipes/quickstart.yaml"), *extra, *FAST,
              "--trainer.default_root_dir", str(tmp_path)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = tmp_path / "checkpoints/last.ckpt"
    assert ckpt.exists()
    rows = list(csv.DictReader(open(next((tmp_path / "logs").rglob("metrics.csv")))))
    assert any(row.get("val/loss") for row in rows) and any(row.get("train/loss") for row in rows)
    assert torch.load(ckpt, weights_only=True)["model_config"]["family"] == family
    for sub in ("validate", "test", "predict"):
        v = _cli([sub, "--config", str(REPO / "recipes/quickstart.yaml"), *extra, "--ckpt_path", str(ckpt),
                  "--data.init_args.seq_len", "64", "--data.init_args.num_workers", "0",
                  "--data.init_args.val_batches", "2", "--trainer.default_root_dir", str(tmp_path / sub),
                  "--trainer.enable_progress_bar", "false"], cwd=tmp_path)
        assert v.returncode == 0, (sub, v.stderr[-2000:])
        if sub != "predict":
            assert f"{'val' if sub == 'validate' else 'test'}/loss" in v.stdout
    g = _cli(["generate", "--ckpt", str(ckpt), "--prompt", "In the beginning", "--prompt", "hacker",
              "--max_new_tokens", "5", "--json"], cwd=tmp_path)
    assert g.returncode == 0, g.stderr[-2000:]
    assert '"prompt": "hacker"' in g.stdout
    out = tmp_path / "w.safetensors"
    e = _cli(["export", "--ckpt", str(ckpt), "--out", str(out)], cwd=tmp_path)
    assert e.returncode == 0 and out.exists(), e.stderr[-2000:]


def test_user_objective_subclass_through_cli(tmp_path):
    r = _cli(["fit", *FAST, "--model.class_path", "user_objective.SpanCorruptionRedLLM",
              "--model.init_args.span_len", "2", "--trainer.default_root_dir", str(tmp_path)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    hparams = next((tmp_path / "logs").rglob("hparams.yaml")).read_text()
    assert "span_len: 2" in hparams


def test_recipe_typo_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    lrr: 0.1\n")
    r = _cli(["fit", "--config", str(REPO / "recipes/quickstart.yaml"), "--config", str(bad)], cwd=tmp_path)
    assert r.returncode != 0 and "lrr" in r.stderr


def test_missing_shards_fail_before_training(tmp_path):
    r = _cli(["fit", *FAST, "--data.init_args.train_shards", str(tmp_path / "nope/shard-{000000..000003}.tar")],
             cwd=tmp_path)
    assert r.returncode != 0
    assert "nope" in r.stderr and "Epoch 0" not in r.stdout


def test_help_lists_subcommands(tmp_path):
    r = _cli(["--help"], cwd=tmp_path)
    for sub in ("fit", "validate", "test", "predict", "generate", "export"):
        assert sub in r.stdout


def test_the_shared_base_module_refuses_to_be_used_directly():
    from lightning_redllm.modules import LanguageModelModule
    with pytest.raises(TypeError, match="objective"):
        LanguageModelModule()


def test_last_checkpoint_is_the_final_step(tmp_path):
    """Lightning's ModelCheckpoint(every_n_train_steps=2, save_last=True) leaves last.ckpt at step 2 of a
    3-step run; the recipes' RunCheckpoint saves step 3 (and its step file) too."""
    from lightning_redllm.modules.callbacks import RunCheckpoint

    L.seed_everything(0)
    dm = PretrainDataModule(seq_len=64, batch_size=2, num_workers=0)
    cb = RunCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_last=True, save_top_k=-1)
    m = module("decllm")
    trainer(tmp_path, 3, callbacks=[cb], enable_checkpointing=True).fit(m, datamodule=dm)
    last = torch.load(tmp_path / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["global_step"] == 3
    assert sorted(p.name.split("-")[-1] for p in tmp_path.glob("epoch=*.ckpt")) == ["step=2.ckpt", "step=3.ckpt"]
    for k, v in m.model.state_dict().items():
        torch.testing.assert_close(last["state_dict"][f"model.{k}"], v, rtol=0, atol=0)


def test_every_recipe_checkpoint_keeps_the_final_step():
    """A recipe with a checkpoint callback uses RunCheckpoint, not Lightning's ModelCheckpoint."""
    import yaml

    from lightning_redllm.assets.recipes import RECIPES

    seen = 0
    for path in RECIPES.rglob("*.yaml"):
        for cb in ((yaml.safe_load(path.read_text()) or {}).get("trainer") or {}).get("callbacks") or []:
            if "Checkpoint" in cb.get("class_path", ""):
                seen += 1
                assert cb["class_path"] == "lightning_redllm.modules.callbacks.RunCheckpoint", path
    assert seen >= 4
