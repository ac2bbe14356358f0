"""Config faults: unknown key, wrong type, model/tokenizer vocab mismatch, data from another
tokenizer, ``init_from`` / ``ckpt_path`` of the other family or another size -> an error naming the
key or file, raised before any training step."""
from __future__ import annotations

import json

import pytest
import torch
from fault_helpers import SMALL, Steps, fit_config, run_main, tiny_module, tiny_trainer

from lightning_redllm.data import PretrainDataModule
from lightning_redllm.modules import DecLLMModule, RedLLMModule

def weights_file(path, cls=RedLLMModule, **overrides):
    """A Lightning-format checkpoint of a tiny model (what init_from / ckpt_path read)."""
    m = tiny_module(cls, preset=f"{cls.family}-tiny", overrides={**SMALL, **overrides})
    m.configure_model()
    torch.save({"state_dict": {f"model.{k}": v for k, v in m.model.state_dict().items()},
                "model_config": m.config.to_dict(), "hyper_parameters": dict(m.hparams)}, path)
    return path


def _cases(tmp):
    typo = tmp / "typo.yaml"
    typo.write_text("model:\n  init_args:\n    lrr: 0.1\n")
    wrong = tmp / "wrong.yaml"
    wrong.write_text("trainer:\n  max_steps: ten\n")
    small_vocab = json.dumps({**SMALL, "vocab_size": 1000})
    return {
        "recipe typo": (["--config", str(typo)], ["lrr"]),
        "flag typo": (["--trainer.max_stepz", "3"], ["max_stepz"]),
        "flag type": (["--model.init_args.lr", "fast"], ["lr", "fast"]),
        "recipe type": (["--config", str(wrong)], ["max_steps", "ten"]),
        "vocab": (["--model.init_args.overrides", small_vocab], ["vocab_size 4096", "vocab_size 1000"]),
        "family": (["--model.class_path", "lightning_redllm.modules.DecLLMModule", "--model.init_args.preset",
                    "decllm-tiny", "--model.init_args.init_from", str(weights_file(tmp / "redllm-weights.ckpt"))],
                   ["redllm-weights.ckpt", "family"]),
    }


@pytest.mark.parametrize("case", ["recipe typo", "flag typo", "flag type", "recipe type", "vocab", "family"])
def test_cli_config_fault_names_the_key(tmp_path, capsys, case):
    cfg = fit_config(tmp_path / "run", steps=4, workers=0, step_log=tmp_path / "steps.log")
    args, names = _cases(tmp_path)[case]
    code, out, err = run_main(["fit", "--config", str(cfg), *args], capsys)
    assert code != 0
    assert all(n in err for n in names), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert not (tmp_path / "steps.log").exists(), "a training step ran"


def _no_step_runs(tmp_path, module, dm=None, ckpt_path=None, match=""):
    rec = Steps()
    dm = dm or PretrainDataModule(seq_len=64, batch_size=2, num_workers=0)
    with pytest.raises(ValueError, match=match):
        tiny_trainer(tmp_path, 3, callbacks=[rec]).fit(module, datamodule=dm, ckpt_path=ckpt_path)
    assert rec.records == []


def test_init_from_another_size_names_file_and_keys(tmp_path):
    ckpt = weights_file(tmp_path / "wide.ckpt", d_model=128, head_dim=64)
    _no_step_runs(tmp_path, tiny_module(init_from=str(ckpt)), match=r"wide\.ckpt.*d_model: checkpoint 128 vs model 64")


def test_init_from_the_other_family(tmp_path):
    ckpt = weights_file(tmp_path / "dec.ckpt", cls=DecLLMModule)
    _no_step_runs(tmp_path, tiny_module(init_from=str(ckpt)),
                  match=r"dec\.ckpt.*family: checkpoint 'decllm' vs model 'redllm'")


def test_resume_from_a_checkpoint_of_another_size_names_it(tmp_path):
    t = tiny_trainer(tmp_path / "a", 2)
    t.fit(tiny_module(overrides={**SMALL, "ffn_dim": 256}),
          datamodule=PretrainDataModule(seq_len=64, batch_size=2, num_workers=0))
    ckpt = tmp_path / "big-ffn.ckpt"
    t.save_checkpoint(ckpt)
    _no_step_runs(tmp_path, tiny_module(), ckpt_path=str(ckpt),
                  match=r"big-ffn\.ckpt.*ffn_dim: checkpoint 256 vs model 128")


def test_data_from_another_tokenizer_than_the_model(tmp_path):
    m = tiny_module(tokenizer="mistral-v1-32k", overrides={**SMALL, "vocab_size": 32768})
    _no_step_runs(tmp_path, m, match=r"tokenized with bundled-bpe-4k.*mistral-v1-32k.*--model.init_args.tokenizer")


def test_model_vocab_smaller_than_tokenizer():
    with pytest.raises(ValueError, match=r"vocab_size 4096 but the model preset 'redllm-tiny' has vocab_size 1000"):
        tiny_module(overrides={**SMALL, "vocab_size": 1000})
