"""No silent hang (issue 17 part 6): the DDP/FSDP/ZeRO-3 recipes set a 10-minute collective timeout
that a flag overrides, and when a rank is killed the other rank stops on its own, well within that
timeout, with one line naming the lost rank; relaunching with ``--ckpt_path last`` then ends at the
weights of a run that was never interrupted.

The two ranks are started the way SLURM or a multi-node torchrun starts them -- one process per
"node", each given MASTER_ADDR/PORT, WORLD_SIZE and NODE_RANK -- so nothing but the ranks themselves
notices the loss (Lightning's own single-node launcher would kill the group as soon as a child dies,
which says nothing about a job spread over several hosts). CPU, gloo, the real CLI
(``python -m lightning_redllm fit --config quickstart --config strategy/ddp``), tiny preset, 8 steps.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 30  # the collective timeout the test runs under (the recipes: 10 minutes)
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp: Path, root: Path, *extra: str) -> list[dict]:
    """Both ranks of one fit; returns per rank: exit code, exit time, stderr."""
    over = tmp / "over.yaml"
    over.write_text(
        "trainer:\n  max_steps: 8\n  limit_val_batches: 0\n  logger: false\n  callbacks:\n"
        "    - class_path: lightning_redllm.modules.callbacks.RunCheckpoint\n"
        f"      init_args: {{dirpath: '{root}/checkpoints', save_last: true, every_n_train_steps: 2, save_top_k: -1}}\n"
        "data:\n  init_args: {num_workers: 0, seq_len: 64, batch_size: 4}\n")
    cmd = [sys.executable, "-m", "lightning_redllm", "fit", "--config", "quickstart", "--config", "strategy/ddp",
           "--config", str(over), "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "2",
           "--trainer.strategy.init_args.timeout", str(dt.timedelta(seconds=TIMEOUT_S)),
           "--trainer.default_root_dir", str(root), *extra]
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2",
               "NODE_RANK": str(rank), "LOCAL_RANK": "0",
               "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "data"), os.environ.get("PYTHONPATH", "")])}
        err = open(tmp / f"{root.name}-rank{rank}.err", "w+")
        procs.append((subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=err), err))
    results = [None, None]
    deadline = time.time() + 600
    while None in results:
        for rank, (proc, err) in enumerate(procs):
            if results[rank] is None and proc.poll() is not None:
                err.seek(0)
                results[rank] = {"rc": proc.returncode, "ended": time.time(), "stderr": err.read()}
                err.close()
        if time.time() > deadline:
            for proc, _ in procs:
                proc.kill()
            raise AssertionError("the ranks did not end within 600 s")
        time.sleep(0.1)
    return results


def _kill_at(rank: int, step: int) -> str:
    return "--trainer.callbacks+=" + json.dumps(
        {"class_path": "kill_rank.KillRankAt", "init_args": {"rank": rank, "step": step}})


def _killed_at(stderr: str) -> float:
    return float(next(line for line in stderr.splitlines() if line.startswith("KILLED rank")).split(" at ")[1])


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_killed_rank_is_named_and_the_relaunch_resumes_exactly(tmp_path):
    full = _launch(tmp_path, tmp_path / "full")
    assert [r["rc"] for r in full] == [0, 0], full[0]["stderr"][-3000:] + full[1]["stderr"][-3000:]
    assert not any("lost" in r["stderr"] for r in full)  # finishing at different times is no loss

    run = tmp_path / "run"
    killed = _launch(tmp_path, run, _kill_at(1, 5))  # after the step-4 checkpoint
    assert killed[1]["rc"] == -9
    survivor = killed[0]
    waited = survivor["ended"] - _killed_at(killed[1]["stderr"])
    assert survivor["rc"] != 0 and waited < TIMEOUT_S, (survivor["rc"], waited, survivor["stderr"][-3000:])
    last = survivor["stderr"].strip().splitlines()[-1]
    assert last.startswith("error: rank 1 lost: no heartbeat") and "--ckpt_path last" in last, last
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == \
        ["epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "last.ckpt"]

    resumed = _launch(tmp_path, run, "--ckpt_path", "last")
    assert [r["rc"] for r in resumed] == [0, 0], resumed[0]["stderr"][-3000:] + resumed[1]["stderr"][-3000:]
    mine, reference = _weights(run / "checkpoints/last.ckpt"), _weights(tmp_path / "full/checkpoints/last.ckpt")
    assert torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 8
    assert mine.keys() == reference.keys()
    for k, v in reference.items():
        assert torch.equal(mine[k], v), k


def test_killed_rank_zero_is_named_by_the_others(tmp_path):
    """Rank 0 also hosts the rendezvous store: its loss shows as the store going away."""
    killed = _launch(tmp_path, tmp_path / "run", _kill_at(0, 3))
    assert killed[0]["rc"] == -9
    survivor = killed[1]
    waited = survivor["ended"] - _killed_at(killed[0]["stderr"])
    assert survivor["rc"] != 0 and waited < TIMEOUT_S, (survivor["rc"], waited, survivor["stderr"][-3000:])
    last = survivor["stderr"].strip().splitlines()[-1]
    assert last.startswith("error: rank 0 lost: the rendezvous store on its host is unreachable"), last


@pytest.mark.parametrize("recipe", ["ddp", "fsdp", "zero3", "zero3-offload"])
def test_recipes_set_a_ten_minute_collective_timeout(recipe, capsys):
    """The timeout each multi-rank recipe passes to its Lightning strategy (``init_args.timeout``), and
    the flag that overrides it."""
    from lightning_redllm.cli.lightning_cli import RedLLMCLI
    from lightning_redllm.assets.recipes import QUICKSTART, RECIPES

    def timeout(*flags: str) -> str:
        with pytest.raises(SystemExit):
            RedLLMCLI(args=["fit", "--config", str(QUICKSTART), "--config", str(RECIPES / f"strategy/{recipe}.yaml"),
                            *flags, "--print_config"])
        out = capsys.readouterr().out
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.strip().startswith("timeout:"))

    assert timeout() == "0:10:00"
    assert timeout("--trainer.strategy.init_args.timeout", "0:20:00") == "0:20:00"
