"""A callback that SIGKILLs one rank at the start of a given step (as the OOM killer or a lost node
would: no handler, no cleanup), used by tests/test_collective_timeout.py through
``--trainer.callbacks+='{"class_path": "kill_rank.KillRankAt", ...}'`` with tests/data on PYTHONPATH.
Before dying it prints ``KILLED rank R at T`` (T = time.time()) so the test can time the survivors."""
import os
import signal
import sys
import time

import lightning as L


class KillRankAt(L.Callback):
    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            os.write(sys.stderr.fileno(), f"KILLED rank {self.rank} at {time.time():.3f}\n".encode())
            os.kill(os.getpid(), signal.SIGKILL)
