"""``compile=True`` training: zero graph breaks on the training path of both families (the fused
loss included), compiled == eager for the loss and every gradient over a few optimizer steps
(with and without activation checkpointing), and the module option / recipe wiring.

Tolerance (fp32 on the CPU): the compiled kernels fuse and reorder the same fp32 arithmetic
(eps 1.2e-7); over reductions of at most a few hundred terms that stays within ~1e-5 relative of
eager, and SGD keeps the weight difference proportional to it over the steps -> rtol 1e-4, atol 1e-5
(1e-4 for the gradients, whose small entries carry the absolute error of the large ones).
"""
from __future__ import annotations

import copy

import pytest
import torch

from lightning_redllm.config import ModelConfig
from lightning_redllm.models import build_model
from lightning_redllm.scale.parallel import apply_activation_checkpointing

SMALL = dict(vocab_size=256, d_model=32, n_heads=2, head_dim=16, ffn_dim=64, n_layers=2, n_encoder_layers=1,
             n_decoder_layers=2, loss_chunk_tokens=24)  # 2 x 20 tokens -> the loss runs two chunks


def _model(family):
    torch.manual_seed(0)
    m = build_model(ModelConfig(family=family, **SMALL))
    m.init_weights()
    return m


def _batch(family, seed):
    g = torch.Generator().manual_seed(seed)
    if family == "decllm":  # instruction-style: a bidirectional prefix and ignored positions
        ids = torch.randint(0, 256, (2, 20), generator=g)
        labels = ids.clone()
        labels[:, :5] = -100
        return dict(input_ids=ids, labels=labels, prefix_lengths=torch.tensor([5, 3]))
    enc = torch.randint(0, 256, (2, 12), generator=g)
    dec = torch.randint(0, 256, (2, 20), generator=g)
    labels = dec.clone()
    labels[1, 15:] = -100
    return dict(encoder_input_ids=enc, decoder_input_ids=dec, labels=labels, encoder_lengths=torch.tensor([12, 7]))


def _loss(m, family, b):
    if family == "decllm":
        return m(b["input_ids"], b["labels"], prefix_lengths=b["prefix_lengths"], z_loss=1e-4).loss
    return m(b["encoder_input_ids"], b["decoder_input_ids"], b["labels"], encoder_lengths=b["encoder_lengths"],
             z_loss=1e-4).loss


@pytest.mark.parametrize("family", ["decllm", "redllm"])
def test_training_path_has_no_graph_breaks(family):
    """The whole forward with the fused loss (value checks off, as in a training step: the module
    checks the CPU batch) is one graph; backward is the compiled autograd of that graph."""
    m, b = _model(family), _batch(family, 0)
    with m.inputs_checked():
        explanation = torch._dynamo.explain(lambda: _loss(m, family, b))()
    assert explanation.graph_break_count == 0, [r.reason for r in explanation.break_reasons]
    assert explanation.graph_count == 1
    # teeth: a host read of a device value (here the value checks forced on) shows up as a break
    m._check_values = lambda: True
    assert torch._dynamo.explain(lambda: _loss(m, family, b))().graph_break_count > 0


@pytest.mark.parametrize("family,checkpointing", [("decllm", False), ("redllm", True)])
def test_compiled_training_matches_eager(family, checkpointing):
    eager = _model(family)
    compiled = copy.deepcopy(eager)
    if checkpointing:  # compile the checkpoint wrappers: the recompute is inside the compiled block
        apply_activation_checkpointing(eager)
        apply_activation_checkpointing(compiled)
    compiled.compile_blocks()
    assert compiled.is_compiled and not eager.is_compiled
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints interchangeable
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    opts = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (eager, compiled)]
    for step in range(3):
        b = _batch(family, step)
        losses = []
        for m, opt in zip((eager, compiled), opts):
            with m.inputs_checked():
                loss = _loss(m, family, b)
            loss.backward()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
        for (name, pe), pc in zip(eager.named_parameters(), compiled.parameters()):
            torch.testing.assert_close(pc.grad, pe.grad, rtol=1e-4, atol=1e-4, msg=lambda s: f"{name}: {s}")
        for opt in opts:
            opt.step()
            opt.zero_grad()
    assert losses[0] < 5.6  # it trained (ln 256 = 5.55 at init): the comparison is not of constants
    assert counters["stats"]["unique_graphs"] > graphs  # the compiled model really ran compiled code


def test_module_option_and_recipe(tmp_path):
    """``compile`` is a module argument (saved in hparams, set by recipes/feature/compile.yaml):
    configure_model compiles the blocks, after activation checkpointing."""
    from lightning_redllm.cli.lightning_cli import RedLLMCLI
    from lightning_redllm.assets.recipes import QUICKSTART, RECIPES
    from lightning_redllm.modules import DecLLMModule

    small = SMALL | {"vocab_size": 4096}  # the bundled tokenizer's
    m = DecLLMModule(preset="decllm-tiny", overrides=small, compile=True, activation_checkpointing=True)
    assert m.hparams.compile
    m.configure_model()
    assert m.model.is_compiled
    assert all(type(b).__name__ == "CheckpointWrapper" and b._compiled_call_impl is not None for b in m.model.layers)
    assert not DecLLMModule(preset="decllm-tiny", overrides=small).hparams.compile
    cli = RedLLMCLI(args=["--config", str(QUICKSTART), "--config", str(RECIPES / "feature/compile.yaml"),
                          "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert cli.model.hparams.compile is True


def test_generate_cli_compile_flag(tmp_path, monkeypatch, capsys):
    """``generate --compile`` reaches ``generate_text(compile=True)`` (the compiled path's tokens are
    tested in tests/test_static_cache.py); ``--compile --no_cache`` is refused in one line."""
    from lightning_redllm.cli import commands
    from lightning_redllm.modules import RedLLMModule

    m = RedLLMModule(preset="redllm-tiny", overrides=SMALL | {"vocab_size": 4096})
    m.configure_model()
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in m.model.state_dict().items()},
                "model_config": m.config.to_dict(), "hyper_parameters": {"tokenizer": "bundled-bpe-4k"}}, ckpt)
    seen = {}

    def fake(model, tok, prompts, **kw):
        seen.update(kw)
        return ["ok"] * len(prompts)

    monkeypatch.setattr(commands, "generate_text", fake)
    args = ["--ckpt", str(ckpt), "--prompt", "In the beginning", "--device", "cpu", "--progress_every", "0"]
    assert commands.generate_main(args + ["--compile"]) == 0 and seen["compile"] is True
    assert commands.generate_main(args) == 0 and seen["compile"] is False
    assert commands.generate_main(args + ["--compile", "--no_cache"]) == 2
    assert "--no_cache" in capsys.readouterr().err
