"""Untrusted files: checkpoints are loaded with ``weights_only=True`` everywhere (a tampered
checkpoint is refused without running its code), exported weights are safetensors, recipes are
parsed without executing anything."""
from __future__ import annotations

import ast
import json
import os
import struct
import sys
import types
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from fault_helpers import REPO, fit_config, run_main, tiny_module, tiny_trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_redllm.data import PretrainDataModule
from lightning_redllm.modules.checkpoint import load_weights
from lightning_redllm.reliability import AtomicCheckpointIO, CheckpointLoadError

FORBIDDEN = ("pickle.load", "pickle.loads", "eval", "exec", "builtins.eval", "builtins.exec", "yaml.unsafe_load",
             "marshal.loads", "dill.load", "dill.loads", "cloudpickle.load", "cloudpickle.loads")
SOURCES = sorted([*(REPO / "lightning_redllm").rglob("*.py"), *(REPO / "data_pipelines").rglob("*.py")])


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name):
                name = f.id  # eval(...), exec(...)
            elif isinstance(f, ast.Attribute):  # torch.load(...); x.y.eval() becomes ".eval", not "eval"
                name = f"{f.value.id if isinstance(f.value, ast.Name) else ''}.{f.attr}"
            else:
                continue
            yield name, node


def test_package_never_unpickles_untrusted_content():
    assert len(SOURCES) > 20
    problems, loads = [], 0
    for path in SOURCES:
        for name, node in _calls(path):
            kw = {k.arg: k.value for k in node.keywords}
            where = f"{path.relative_to(REPO)}:{node.lineno} {name}"
            if name == "torch.load":
                loads += 1
                wo = kw.get("weights_only")
                # a literal True, or the weights_only parameter of load_torch_file (default True)
                if not (isinstance(wo, ast.Constant) and wo.value is True) and not isinstance(wo, ast.Name):
                    problems.append(where)
            if name in FORBIDDEN:
                problems.append(where)
            if name == "yaml.load" and "SafeLoader" not in ast.unparse(node):
                problems.append(where)
            if name in ("np.load", "numpy.load") and not (
                    isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is False):
                problems.append(where)
            # (Trainer.save_checkpoint(weights_only=False) writes a full checkpoint: nothing is unpickled)
            if any(k == "weights_only" and isinstance(v, ast.Constant) and v.value is False for k, v in kw.items()) \
                    and not name.endswith(".save_checkpoint"):
                problems.append(where)
    assert problems == [] and loads >= 1
    import inspect

    from lightning_redllm.reliability import load_torch_file
    assert inspect.signature(load_torch_file).parameters["weights_only"].default is True


def test_recipes_hold_no_executable_yaml_tags_and_none_run(tmp_path, capsys):
    for recipe in (REPO / "recipes").rglob("*.yaml"):
        assert "!!python" not in recipe.read_text(), recipe
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"trainer:\n  max_steps: !!python/object/apply:os.system ['touch {marker}']\n")
    cfg = fit_config(tmp_path / "run", steps=2, workers=0)
    code, _, err = run_main(["fit", "--config", str(cfg), "--config", str(evil)], capsys)
    assert code != 0 and not marker.exists(), err[-2000:]
    from omegaconf import OmegaConf

    import lightning_redllm.cli.lightning_cli  # noqa: F401  (registers whatever the CLI registers)
    assert not any(OmegaConf.has_resolver(r) for r in ("eval", "exec", "python", "import"))


class _Evil:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def evil_ckpt(tmp_path):
    """A checkpoint that runs a command if unpickled with weights_only=False."""
    marker = tmp_path / "pwned"
    _Evil.marker = str(marker)
    m = tiny_module()
    m.configure_model()
    path = tmp_path / "tampered.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in m.model.state_dict().items()},
                "model_config": m.config.to_dict(), "hyper_parameters": {"tokenizer": "bundled-bpe-4k"},
                "payload": _Evil()}, path)
    return path, marker


def test_tampered_checkpoint_is_refused_everywhere(tmp_path, capsys, evil_ckpt):
    path, marker = evil_ckpt
    with pytest.raises(CheckpointLoadError, match=r"tampered\.ckpt.*refuses.*GLOBAL posix.system"):
        load_weights(path)  # init_from
    with pytest.raises(CheckpointLoadError, match=r"tampered\.ckpt"):
        AtomicCheckpointIO().load_checkpoint(path)  # resume with the plugin
    with pytest.raises(Exception, match="Weights only load failed"):  # resume with Lightning's default IO
        tiny_trainer(tmp_path, 2).fit(tiny_module(), datamodule=PretrainDataModule(seq_len=64, num_workers=0),
                                      ckpt_path=str(path))
    for cmd in (["generate", "--ckpt", str(path), "--prompt", "hi"], ["export", "--ckpt", str(path), "--out",
                                                                      str(tmp_path / "w.safetensors")]):
        code, _, err = run_main(cmd, capsys)
        assert code != 0 and "tampered.ckpt" in err and "Traceback" not in err, err[-2000:]
    assert not marker.exists()


def test_checkpoints_of_every_data_setting_load_weights_only(tmp_path):
    """Regression: an empty shuffle buffer (shuffle_buffer=0) used to pickle b"" as a call to
    ``bytes``, which weights_only=True refuses -- Lightning's default resume failed on it."""
    cb = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2)
    dm = PretrainDataModule(seq_len=64, batch_size=2, num_workers=0, shuffle_buffer=0)
    tiny_trainer(tmp_path, 2, callbacks=[cb], enable_checkpointing=True).fit(tiny_module(), datamodule=dm)
    ckpt = tmp_path / "epoch=0-step=2.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 2
    t = tiny_trainer(tmp_path, 3)
    t.fit(tiny_module(), datamodule=PretrainDataModule(seq_len=64, batch_size=2, num_workers=0, shuffle_buffer=0),
          ckpt_path=str(ckpt))
    assert t.global_step == 3


def test_export_writes_safetensors_that_load_without_pickle(tmp_path, capsys):
    t = tiny_trainer(tmp_path, 1)
    m = tiny_module()
    t.fit(m, datamodule=PretrainDataModule(seq_len=64, batch_size=2, num_workers=0))
    ckpt = tmp_path / "run.ckpt"
    t.save_checkpoint(ckpt)
    out = tmp_path / "w.safetensors"
    code, _, err = run_main(["export", "--ckpt", str(ckpt), "--out", str(out)], capsys)
    assert code == 0, err
    raw = out.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])  # safetensors: a JSON header and raw tensor bytes, no pickle
    assert json.loads(header["__metadata__"]["lightning_redllm.model_config"])["family"] == "redllm"
    state, cfg = load_weights(out)
    for k, v in m.model.state_dict().items():
        assert torch.equal(state[k], v), k
    code, _, err = run_main(["generate", "--ckpt", str(out), "--tokenizer", "bundled-bpe-4k", "--prompt", "In",
                                    "--max_new_tokens", "2"], capsys)
    assert code == 0, err


def _fake_deepspeed(monkeypatch, state):
    calls = []

    def consolidate(path):
        calls.append(path)
        return dict(state)

    zero_to_fp32 = types.ModuleType("deepspeed.utils.zero_to_fp32")
    zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint = consolidate
    for name in ("deepspeed", "deepspeed.utils"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "deepspeed.utils.zero_to_fp32", zero_to_fp32)
    return calls


def test_deepspeed_dir_model_states_are_read_weights_only(tmp_path, monkeypatch, evil_ckpt):
    m = tiny_module()
    m.configure_model()
    state = {f"model.{k}": v for k, v in m.model.state_dict().items()}
    calls = _fake_deepspeed(monkeypatch, state)
    ds = tmp_path / "ds" / "checkpoint"
    ds.mkdir(parents=True)
    # what DeepSpeed 0.19 writes into mp_rank_00_model_states.pt plus Lightning's client state
    client = {"module": None, "buffer_names": [], "optimizer": None,
              "param_shapes": [OrderedDict((k, v.shape) for k, v in m.model.state_dict().items())],
              "frozen_param_shapes": None, "shared_params": {}, "frozen_param_fragments": None,
              "lr_scheduler": {"base_lrs": [3e-4], "last_epoch": 4, "lr_lambdas": [{}]}, "data_sampler": None,
              "random_ltd": None, "skipped_steps": 0, "global_steps": 4, "global_samples": 16, "dp_world_size": 1,
              "mp_world_size": 1, "ds_config": {"zero_optimization": {"stage": 3}, "bf16": {"enabled": True}},
              "ds_version": "0.19.8", "model_config": m.config.to_dict(), "global_step": 4, "epoch": 0}
    torch.save(client, ds / "mp_rank_00_model_states.pt")
    got, cfg = load_weights(tmp_path / "ds")
    assert cfg == m.config.to_dict() and calls and set(got) == set(m.model.state_dict())

    calls.clear()
    _, marker = evil_ckpt
    client["payload"] = _Evil()
    torch.save(client, ds / "mp_rank_00_model_states.pt")
    with pytest.raises(CheckpointLoadError, match="mp_rank_00_model_states.pt.*refuses"):
        load_weights(tmp_path / "ds")
    assert calls == [] and not marker.exists()  # refused before DeepSpeed's own (unsafe) loader ran
