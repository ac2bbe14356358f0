"""No avoidable host-device sync in a training step, counted on the CPU.

On an accelerator, reading a device value on the host (``.item()``, ``bool(t)``, ``int(t)``,
``tolist()``, boolean-mask indexing / ``nonzero`` whose output size depends on the data) waits for
the device. ``SyncCounter`` counts exactly those operations (at the dispatcher, so reads inside
torch -- a boolean index -- are seen too), which lets a CPU test fail where a GPU would sync:

* the model's forward + fused loss + backward on checked inputs reads nothing (the optimizer is
  left out here: AdamW reads its step counters, which live on the host unless ``capturable``, so
  on the CPU they look like device reads; the GPU test includes it);
* a Lightning training step reads nothing in ``training_step`` and exactly one flag per optimizer
  step (every gradient and, deferred, every loss finite) in ``on_before_optimizer_step``;
* the guarantees stay: bad ids / labels / encoder lengths are refused on the CPU batch with the
  model's messages, and a deferred non-finite loss still skips the step (weights untouched).

``tests/test_gpu.py`` checks the same on CUDA with ``torch.cuda.set_sync_debug_mode("error")``.
"""
from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_redllm.modules import DecLLMModule, RedLLMModule
from lightning_redllm.modules.base import CHECKED_INPUTS

SMALL = dict(d_model=32, n_heads=2, head_dim=16, ffn_dim=64, n_layers=2, n_encoder_layers=1, n_decoder_layers=1)
READS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.masked_select.default",
         "aten.unique_consecutive.default", "aten._unique2.default"}


class SyncCounter(TorchDispatchMode):
    """Counts operations that, on an accelerator, copy a data-dependent value to the host."""

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        bool_index = name.startswith("aten.index.Tensor") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ()) or ())
        if name in READS or bool_index:
            self.reads.append(name)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def counter(monkeypatch):
    c = SyncCounter()
    orig = torch.Tensor.tolist  # tolist does not pass the dispatcher

    def tolist(t):
        c.reads.append("tolist")
        return orig(t)

    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    return c


def _module(family, **kw):
    torch.manual_seed(0)
    cls = DecLLMModule if family == "decllm" else RedLLMModule
    m = cls(preset=f"{family}-tiny", overrides=SMALL, schedule="constant", warmup_steps=0, lr=1e-3, **kw)
    m.configure_model()
    return m


def _instruct_batch(seed=0):
    """A ragged instruction batch as the data module collates it (CPU)."""
    g = torch.Generator().manual_seed(seed)
    return {"inputs": torch.randint(4, 4096, (3, 9), generator=g), "input_lengths": torch.tensor([9, 4, 1]),
            "targets": torch.randint(4, 4096, (3, 6), generator=g), "target_lengths": torch.tensor([6, 2, 5])}


@pytest.mark.parametrize("family", ["decllm", "redllm"])
def test_model_step_on_checked_inputs_reads_nothing(family, counter):
    m = _module(family, bidirectional_prefix=True) if family == "decllm" else _module(family)
    batch = m.on_before_batch_transfer(_instruct_batch(), 0)  # objective + checks on the CPU batch
    inputs, checked = m.model_inputs(batch)
    assert checked and ("encoder_lengths" in inputs or "prefix_lengths" in inputs)
    with counter:
        with m.model.inputs_checked(checked):
            out = m.forward_batch(inputs)
        out.loss.backward()
    assert counter.reads == []
    assert all(p.grad is not None for p in m.parameters())
    # teeth: the same step with the model's own value checks reads device values several times
    with counter:
        m.forward_batch(m.objective(_instruct_batch()))
    assert len(counter.reads) >= 3, counter.reads


class Counted:
    """Mixin: count reads inside training_step and on_before_optimizer_step."""

    defer_nonfinite_check = True

    def setup_counts(self, counter):
        self.counter, self.counts = counter, {"training_step": [], "on_before_optimizer_step": []}

    def _counted(self, name, fn, *args):
        start = len(self.counter.reads)
        with self.counter:
            out = fn(*args)
        self.counts[name].append(len(self.counter.reads) - start)
        return out

    def training_step(self, batch, i):
        return self._counted("training_step", super().training_step, batch, i)

    def on_before_optimizer_step(self, opt):
        return self._counted("on_before_optimizer_step", super().on_before_optimizer_step, opt)


class CountedRedLLM(Counted, RedLLMModule):
    poison: set = set()

    def forward_batch(self, inputs):
        out = super().forward_batch(inputs)
        if self.trainer.global_step in self.poison:
            out.loss = out.loss * float("nan")
        return out


class CountedDecLLM(Counted, DecLLMModule):
    pass


def _fit(m, batches, steps, **trainer_kw):
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, **trainer_kw)
    trainer.fit(m, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return trainer


@pytest.mark.parametrize("cls", [CountedDecLLM, CountedRedLLM], ids=["decllm", "redllm"])
def test_lightning_step_reads_one_flag_per_optimizer_step(cls, counter, tmp_path):
    m = cls(preset=f"{cls.family}-tiny", overrides=SMALL, schedule="constant", warmup_steps=0)
    m.setup_counts(counter)
    _fit(m, [_instruct_batch(s) for s in range(4)], steps=2, accumulate_grad_batches=2, default_root_dir=tmp_path)
    assert m.counts["training_step"] == [0, 0, 0, 0]
    assert m.counts["on_before_optimizer_step"] == [1, 1]


def test_deferred_nonfinite_loss_still_skips_the_step(tmp_path, caplog):
    m = CountedRedLLM(preset="redllm-tiny", overrides=SMALL, schedule="constant", warmup_steps=0)
    m.poison = {1}
    m.setup_counts(SyncCounter())
    seen = {}

    class Weights(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, i):
            seen[trainer.global_step] = module.model.embed.weight.detach().clone()

    _fit(m, [_instruct_batch(s) for s in range(3)], steps=3, default_root_dir=tmp_path, callbacks=[Weights()])
    assert m.skipped_steps == 1
    assert torch.equal(seen[1], seen[2])  # the poisoned step changed nothing (the global step still advanced)
    assert not torch.equal(seen[2], seen[3]) and torch.isfinite(seen[3]).all()
    assert "non-finite loss" in caplog.text


def test_bad_inputs_are_refused_on_the_cpu_batch():
    red, dec = _module("redllm"), _module("decllm")
    bad = _instruct_batch()
    bad["inputs"][1, 2] = 5000
    with pytest.raises(ValueError, match=r"encoder_input_ids contains token id 5000 outside the model vocabulary"):
        red.on_before_batch_transfer(bad, 0)
    with pytest.raises(ValueError, match=r"input_ids contains token id 5000"):
        dec.on_before_batch_transfer(bad, 0)
    bad = _instruct_batch()
    bad["targets"][0, 0] = -7
    with pytest.raises(ValueError, match=r"-7"):
        red.on_before_batch_transfer(bad, 0)
    bad = _instruct_batch()
    bad["input_lengths"][2] = 0
    with pytest.raises(ValueError, match=r"encoder_lengths must lie in \[1, 9\]"):
        red.on_before_batch_transfer(bad, 0)
    good = red.on_before_batch_transfer(_instruct_batch(), 0)
    assert set(good) == set(_instruct_batch()) | {CHECKED_INPUTS}  # the data keys stay for callbacks
