"""Fault injectors and probes shared by the fault tests; also imported by the CLI subprocesses
(``tests/faults`` is put on their PYTHONPATH), so everything here is addressable as a class_path.
"""
from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import IO, Any, Optional

import lightning as L
import torch
import yaml

from lightning_redllm.modules import RedLLMModule
from lightning_redllm.reliability import AtomicCheckpointIO

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SMALL = dict(d_model=64, n_heads=2, head_dim=32, ffn_dim=128, n_layers=2, n_encoder_layers=1, n_decoder_layers=1)
BUNDLED_TRAIN = REPO / "lightning_redllm/assets/shards/pretrain/train"
ATOMIC_IO = {"class_path": "lightning_redllm.reliability.AtomicCheckpointIO"}


# ------------------------------------------------------------------------------------------------
# callbacks / plugins / modules used inside training runs


class StepLog(L.Callback):
    """Appends ``<global_step> <loss repr>`` per optimizer step to ``path`` and flushes at once,
    so a parent process can follow progress and read the exact loss sequence after a kill -9."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        value = repr(float(loss)) if loss is not None else "skipped"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{trainer.global_step} {value}\n")
            f.flush()


class FaultyCheckpointIO(AtomicCheckpointIO):
    """AtomicCheckpointIO whose save number ``after + 1`` misbehaves (earlier saves are normal).

    Args:
        mode: ``hang`` — write half of the file, fsync, touch ``marker`` and sleep (the test kills
            the process then); ``enospc`` / ``eacces`` — write half, then fail like a full disk / a
            permission change.
        after: number of saves that succeed first.
        marker: file touched when the fault fires.
    """

    def __init__(self, mode: str = "hang", after: int = 1, marker: Optional[str] = None):
        super().__init__()
        self.mode, self.after, self.marker = mode, after, marker
        self.saves = 0

    def _dump(self, checkpoint: dict[str, Any], f: IO[bytes]) -> None:
        self.saves += 1
        if self.saves <= self.after:
            return super()._dump(checkpoint, f)
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        if self.marker:
            Path(self.marker).write_text(f.name)
        if self.mode == "hang":
            time.sleep(600)
        code = errno.ENOSPC if self.mode == "enospc" else errno.EACCES
        raise OSError(code, os.strerror(code))


class NaNRedLLM(RedLLMModule):
    """RedLLMModule that goes non-finite at chosen optimizer steps.

    Args:
        bad_steps: global steps (0-based, as ``trainer.global_step`` during the step) to poison.
        bad_kind: ``loss`` (the loss is multiplied by ``bad_value``), ``grad`` (finite loss, one
            gradient entry set to ``bad_value``) or ``param`` (a weight set to ``bad_value`` before
            the forward, so every later loss is non-finite too).
        bad_value: ``nan``, ``inf`` or ``-inf``.
        **kwargs: RedLLMModule arguments.
    """

    def __init__(self, bad_steps: Optional[list[int]] = None, bad_kind: str = "loss", bad_value: float = float("nan"),
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.bad_steps = set(bad_steps or [])
        self.bad_kind, self.bad_value = bad_kind, float(bad_value)

    def _now(self) -> bool:
        return self.training and self.trainer.global_step in self.bad_steps

    def forward_batch(self, inputs):
        if self._now() and self.bad_kind == "param":
            with torch.no_grad():
                self.model.embed.weight[5, 0] = self.bad_value
        out = super().forward_batch(inputs)
        if self._now() and self.bad_kind == "loss":
            out = dataclasses.replace(out, loss=out.loss * self.bad_value)
        return out

    def on_after_backward(self) -> None:
        if self._now() and self.bad_kind == "grad":
            self.model.embed.weight.grad[5, 0] = self.bad_value


# ------------------------------------------------------------------------------------------------
# run helpers


def cli_env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


#: the CLI entry wrapped the way ``lightning_redllm/__main__.py`` should wrap it (one-line errors)
GUARDED_MAIN = ("import sys; from lightning_redllm.__main__ import main; "
                "from lightning_redllm.cli.guard import guarded; sys.exit(guarded(main)(sys.argv[1:]))")


def cli(args: list[str], cwd: Path, *, guarded: bool = False, timeout: float = 300,
        **popen: Any) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", GUARDED_MAIN, *args] if guarded else [sys.executable, "-m", "lightning_redllm", *args]
    return subprocess.run(cmd, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout, **popen)


def cli_popen(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """Start ``python -m lightning_redllm`` in its own process group (so kill -9 takes the workers too)."""
    out = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "lightning_redllm", *args], cwd=cwd, env=cli_env(), stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def fit_config(root: Path, *, steps: int, every: int = 3, workers: int = 2, step_log: Optional[Path] = None,
               plugins: Optional[list[dict]] = None, model: Optional[dict] = None, data: Optional[dict] = None,
               seed: int = 1234) -> Path:
    """A complete, tiny fit recipe (RedLLM with SMALL overrides, seq_len 64) written to ``root/fit.yaml``."""
    callbacks: list[dict] = [{
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"dirpath": str(root / "ckpt"), "every_n_train_steps": every, "save_top_k": -1,
                      "save_last": True},
    }]
    if step_log is not None:
        callbacks.insert(0, {"class_path": "fault_helpers.StepLog", "init_args": {"path": str(step_log)}})
    cfg = {
        "seed_everything": seed,
        "model": model or {"class_path": "lightning_redllm.modules.RedLLMModule",
                           "init_args": {"preset": "redllm-tiny", "overrides": SMALL, "lr": 3e-3, "warmup_steps": 2,
                                         "weight_decay": 0.01}},
        "data": data or {"class_path": "lightning_redllm.data.PretrainDataModule",
                         "init_args": {"seq_len": 64, "batch_size": 4, "num_workers": workers, "shuffle_buffer": 32}},
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": steps, "deterministic": True,
            "default_root_dir": str(root), "logger": False, "enable_progress_bar": False,
            "enable_model_summary": False, "num_sanity_val_steps": 0, "limit_val_batches": 0,
            "gradient_clip_val": 1.0, "callbacks": callbacks,
            "plugins": plugins if plugins is not None else [ATOMIC_IO],
        },
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "fit.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def read_step_log(path: Path) -> dict[int, str]:
    """{global step after the batch: loss repr}; a step logged twice (re-run after a resume) must agree."""
    out: dict[int, str] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        step, loss = line.split()
        assert out.setdefault(int(step), loss) == loss, f"step {step} logged twice with different losses"
    return out


def wait_for(predicate, timeout: float, proc: Optional[subprocess.Popen] = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process and its dataloader workers (its whole session), like a preemption."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


# ------------------------------------------------------------------------------------------------
# shards


def repack_shards(dst: Path, *, docs_per_shard: int = 2, n_shards: int = 10, src: Path = BUNDLED_TRAIN) -> list[Path]:
    """Small shards (``docs_per_shard`` documents each) from the bundled train shards, with a manifest,
    so a short run crosses several shard boundaries."""
    dst.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((src / "manifest.json").read_text())
    with tarfile.open(src / "shard-000000.tar") as tf:
        members: dict[str, list[tuple[tarfile.TarInfo, bytes]]] = {}
        order: list[str] = []
        for m in tf.getmembers():
            key = m.name.split(".", 1)[0]
            if key not in members:
                members[key] = []
                order.append(key)
            members[key].append((m, tf.extractfile(m).read()))
        samples = [members[k] for k in order]
    need = docs_per_shard * n_shards
    assert len(samples) >= need, (len(samples), need)
    entries, paths = [], []
    for s in range(n_shards):
        name = f"shard-{s:06d}.tar"
        path = dst / name
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as out:
            for sample in samples[s * docs_per_shard:(s + 1) * docs_per_shard]:
                for info, data in sample:
                    out.addfile(info, io.BytesIO(data))
        entries.append({"name": name, "documents": docs_per_shard})
        paths.append(path)
    manifest["shards"] = entries
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return paths


def reader_order(shard_dir: Path, *, num_workers: int, seed: int, reader: int = 0) -> list[str]:
    """Shard files reader ``reader`` (rank 0) visits in its first epoch, in order."""
    from lightning_redllm.data import open_shards
    from lightning_redllm.data.stream import DocStream

    shards = open_shards(str(shard_dir), kind="pretrain")
    stream = DocStream(shards, ("tokens.npy",), reader_id=reader, num_workers=num_workers, world_size=1, seed=seed,
                       shuffle=True, shuffle_buffer=0, max_epochs=None, split="shard")
    return [shards.urls[i] for i in stream.loops[0].order(0)]


def tiny_module(cls=RedLLMModule, **kw: Any):
    kw.setdefault("preset", "redllm-tiny")
    kw.setdefault("overrides", SMALL)
    kw.setdefault("warmup_steps", 2)
    return cls(**kw)


def tiny_trainer(root: Path, steps: int, **kw: Any) -> L.Trainer:
    kw.setdefault("logger", False)
    kw.setdefault("enable_checkpointing", False)
    return L.Trainer(accelerator="cpu", devices=1, max_steps=steps, default_root_dir=root, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, **kw)


class Steps(L.Callback):
    """Records, per batch, whether the model weights / optimizer state changed and the loss."""

    def __init__(self):
        super().__init__()
        self.records: list[dict[str, Any]] = []

    @staticmethod
    def _snap(trainer, pl_module):
        weights = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}
        opt = trainer.optimizers[0].state_dict()["state"] if trainer.optimizers else {}
        opt = {(i, k): v.clone() for i, st in opt.items() for k, v in st.items() if torch.is_tensor(v)}
        return weights, opt

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._before = self._snap(trainer, pl_module)
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        (w0, o0), (w1, o1) = self._before, self._snap(trainer, pl_module)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self.records.append({
            "step": self._step,
            "loss": None if loss is None else float(loss),
            "weights_changed": any(not torch.equal(w0[k], w1[k]) for k in w1),
            "opt_changed": o0.keys() != o1.keys() or any(not torch.equal(o0[k], o1[k]) for k in o1),
            "finite": all(torch.isfinite(v).all() for v in w1.values()),
        })


def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    """``python -m lightning_redllm <args>`` in this process, wrapped by ``cli.guard.guarded`` as
    ``__main__`` should be: (exit status, stdout, stderr). Saves the interpreter start-up (~5 s)."""
    from lightning_redllm.__main__ import main
    from lightning_redllm.cli.guard import guarded

    capsys.readouterr()
    try:
        code = guarded(main)(args)
    except SystemExit as exit_:  # argparse / jsonargparse usage errors
        code = exit_.code if isinstance(exit_.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
