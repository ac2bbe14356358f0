"""Preemption and checkpoint-write faults: kill -9 at a random step, kill during a checkpoint write,
disk full / unwritable checkpoint folder. Subprocess runs use the real CLI (2 dataloader workers)."""
from __future__ import annotations

import errno
import random
from pathlib import Path

import pytest
import torch
from fault_helpers import (
    FaultyCheckpointIO,
    Steps,
    cli,
    cli_popen,
    fit_config,
    kill_group,
    read_step_log,
    run_main,
    tiny_module,
    tiny_trainer,
    wait_for,
)
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_redllm.data import PretrainDataModule
from lightning_redllm.modules.checkpoint import load_weights
from lightning_redllm.reliability import (
    AtomicCheckpointIO,
    CheckpointLoadError,
    CheckpointWriteError,
    stale_temp_files,
)

STEPS, EVERY = 18, 3


def _ckpt(step: int = 0) -> dict:
    return {"state_dict": {"model.w": torch.full((64, 64), float(step))}, "global_step": step}


# ------------------------------------------------------------------------------------------------
# AtomicCheckpointIO (in-process)


def test_atomic_write_leaves_only_the_final_file(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "sub" / "last.ckpt"
    io.save_checkpoint(_ckpt(1), path)
    io.save_checkpoint(_ckpt(2), path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    assert io.load_checkpoint(path)["global_step"] == 2


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_failed_write_keeps_previous_checkpoint(tmp_path, code):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_ckpt(1), path)
    io = FaultyCheckpointIO(mode="enospc" if code == errno.ENOSPC else "eacces", after=0)
    if code == errno.EROFS:
        def dump(checkpoint, f):
            f.write(b"partial")
            raise OSError(errno.EROFS, "Read-only file system")
        io._dump = dump
    with pytest.raises(CheckpointWriteError) as info:
        io.save_checkpoint(_ckpt(2), path)
    assert info.value.errno == code
    assert str(path) in str(info.value) and errno.errorcode[code] in str(info.value)
    assert AtomicCheckpointIO().load_checkpoint(path)["global_step"] == 1  # previous file intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # partial temp removed


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint_error_names_the_file(tmp_path, damage):
    path = tmp_path / "epoch=0-step=3.ckpt"
    AtomicCheckpointIO().save_checkpoint(_ckpt(3), path)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00junk" * 100, "empty": b""}[damage])
    with pytest.raises(CheckpointLoadError, match=r"step=3\.ckpt.*(truncated or corrupt|not a torch checkpoint)"):
        AtomicCheckpointIO().load_checkpoint(path)
    with pytest.raises(ValueError, match=r"step=3\.ckpt"):  # init_from / generate / export path
        load_weights(path)


def test_stale_temp_from_a_killed_writer_is_never_last_and_is_cleaned(tmp_path):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_ckpt(1), path)
    stale = tmp_path / ".last.ckpt.tmp-99999-deadbeef"
    stale.write_bytes(b"half a checkpoint")
    # Lightning's ckpt_path="last" lookup: files named last*.ckpt in the checkpoint folder
    assert [p.name for p in tmp_path.glob("last*.ckpt")] == ["last.ckpt"]
    assert not any(p.suffix == ".ckpt" for p in stale_temp_files(path))
    AtomicCheckpointIO().save_checkpoint(_ckpt(2), path)
    assert not stale.exists()


def test_unwritable_checkpoint_folder_fails_before_the_first_step(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # root ignores chmod; a path under a regular file is unwritable
    steps = Steps()
    cb = ModelCheckpoint(dirpath=blocker / "ckpt", every_n_train_steps=2)
    t = tiny_trainer(tmp_path, 4, callbacks=[steps, cb], enable_checkpointing=True, plugins=[AtomicCheckpointIO()])
    with pytest.raises(CheckpointWriteError, match=r"a-file/ckpt.*not writable"):
        t.fit(tiny_module(), datamodule=PretrainDataModule(seq_len=64, batch_size=2, num_workers=0))
    assert steps.records == []


def test_write_error_mid_run_stops_and_keeps_previous(tmp_path):
    """Disk fills up at the second checkpoint: the run stops with the path named; the first stays."""
    steps = Steps()
    cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_last=True, save_top_k=-1)
    t = tiny_trainer(tmp_path, 8, callbacks=[steps, cb], enable_checkpointing=True,
                     plugins=[FaultyCheckpointIO(mode="enospc", after=2)])
    with pytest.raises(CheckpointWriteError, match=r"step=4\.ckpt.*No space left on device"):
        t.fit(tiny_module(), datamodule=PretrainDataModule(seq_len=64, batch_size=2, num_workers=0))
    assert [s["step"] for s in steps.records] == [0, 1, 2, 3]  # stopped at the failed save
    last = tmp_path / "ckpt" / "last.ckpt"
    assert AtomicCheckpointIO().load_checkpoint(last)["global_step"] == 2
    assert sorted(p.name for p in last.parent.iterdir()) == ["epoch=0-step=2.ckpt", "last.ckpt"]


# ------------------------------------------------------------------------------------------------
# subprocess runs through the CLI


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: {step: loss} and its final checkpoint."""
    root = tmp_path_factory.mktemp("reference")
    cfg = fit_config(root, steps=STEPS, every=EVERY, step_log=root / "steps.log")
    r = cli(["fit", "--config", str(cfg)], cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    losses = read_step_log(root / "steps.log")
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses, root / "ckpt" / "last.ckpt"


def _assert_same_run(resumed_last: Path, reference_last: Path) -> None:
    ref, got = torch.load(reference_last, weights_only=True), torch.load(resumed_last, weights_only=True)
    assert got["global_step"] == ref["global_step"] == STEPS
    for k, v in ref["state_dict"].items():
        assert torch.equal(got["state_dict"][k], v), k
    for (i, a), (_, b) in zip(ref["optimizer_states"][0]["state"].items(), got["optimizer_states"][0]["state"].items()):
        assert all(torch.equal(a[k], b[k]) for k in a if torch.is_tensor(a[k])), i


@pytest.mark.slow
def test_kill9_at_a_random_step_then_resume_is_exact(reference, tmp_path):
    ref_losses, ref_last = reference
    kill_at = random.Random(20251128).randint(4, STEPS - 6)
    root = tmp_path / "run"
    cfg = fit_config(root, steps=STEPS, every=EVERY, step_log=root / "steps.log")
    proc = cli_popen(["fit", "--config", str(cfg)], cwd=root, log=root / "out.log")
    wait_for(lambda: len(read_step_log(root / "steps.log")) >= kill_at, 240, proc, f"step {kill_at}")
    kill_group(proc)
    assert proc.returncode == -9
    before = read_step_log(root / "steps.log")
    assert max(before) < STEPS, "the run finished before the kill landed"

    last = root / "ckpt" / "last.ckpt"
    resumed_from = torch.load(last, weights_only=True)["global_step"]
    assert resumed_from % EVERY == 0 and EVERY <= resumed_from <= max(before)
    for p in (root / "ckpt").glob("*.ckpt"):  # whatever the kill interrupted, every *.ckpt is whole
        AtomicCheckpointIO().load_checkpoint(p)

    cfg = fit_config(root, steps=STEPS, every=EVERY, step_log=root / "resumed.log")
    r = cli(["fit", "--config", str(cfg), "--ckpt_path", str(last)], cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    after = read_step_log(root / "resumed.log")
    assert sorted(after) == list(range(resumed_from + 1, STEPS + 1))
    assert {s: ref_losses[s] for s in before} == before  # the killed run followed the reference
    assert {s: ref_losses[s] for s in after} == after  # and so did the resumed one, bit for bit
    _assert_same_run(last, ref_last)


@pytest.mark.slow
def test_kill_during_checkpoint_write_keeps_previous_last(reference, tmp_path):
    """SIGKILL while last.ckpt of step 6 is half written: last.ckpt stays the step-3 one, the
    partial file is a hidden temp that `ckpt_path=last` ignores, and the resumed run is exact."""
    ref_losses, ref_last = reference
    root = tmp_path / "run"
    marker = root / "fault.txt"
    # saves: step 3 -> epoch=0-step=3.ckpt (1), last.ckpt (2); step 6 -> epoch=0-step=6.ckpt (3), last.ckpt (4: hangs)
    plugin = {"class_path": "fault_helpers.FaultyCheckpointIO",
              "init_args": {"mode": "hang", "after": 3, "marker": str(marker)}}
    cfg = fit_config(root, steps=STEPS, every=EVERY, step_log=root / "steps.log", plugins=[plugin])
    proc = cli_popen(["fit", "--config", str(cfg)], cwd=root, log=root / "out.log")
    wait_for(marker.exists, 240, proc, "the checkpoint write to hang")
    kill_group(proc)

    ckpt = root / "ckpt"
    partial = Path(marker.read_text())
    assert partial.exists() and partial.parent == ckpt and partial.name.startswith(".last.ckpt.tmp-")
    with pytest.raises(CheckpointLoadError):
        AtomicCheckpointIO().load_checkpoint(partial)
    assert AtomicCheckpointIO().load_checkpoint(ckpt / "last.ckpt")["global_step"] == 3

    cfg = fit_config(root, steps=STEPS, every=EVERY, step_log=root / "resumed.log")
    r = cli(["fit", "--config", str(cfg), "--ckpt_path", "last"], cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    after = read_step_log(root / "resumed.log")
    assert sorted(after) == list(range(4, STEPS + 1))
    assert {s: ref_losses[s] for s in after} == after
    assert not partial.exists()  # the next write of last.ckpt removed the stale temp
    _assert_same_run(ckpt / "last.ckpt", ref_last)


def test_disk_full_through_the_cli_is_one_clear_line(tmp_path, capsys):
    root = tmp_path / "run"
    plugin = {"class_path": "fault_helpers.FaultyCheckpointIO", "init_args": {"mode": "enospc", "after": 2}}
    cfg = fit_config(root, steps=STEPS, every=EVERY, workers=0, step_log=root / "steps.log", plugins=[plugin])
    code, _, err = run_main(["fit", "--config", str(cfg)], capsys)
    assert code == 1, err[-3000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert "epoch=0-step=6.ckpt" in errors[0] and "No space left on device" in errors[0]
    assert max(read_step_log(root / "steps.log")) == 6  # stopped at the failed save
    assert AtomicCheckpointIO().load_checkpoint(root / "ckpt" / "last.ckpt")["global_step"] == 3
    assert not list((root / "ckpt").glob(".*tmp-*"))
