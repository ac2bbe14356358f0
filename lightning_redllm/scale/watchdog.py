"""No silent hang when a rank dies: heartbeats through the job's rendezvous store.

A multi-process run stops making progress the moment one rank is gone (killed, out of memory,
its node lost): every other rank waits in its next collective. NCCL waits out the collective
timeout (Lightning's default: 30 minutes; our DDP/FSDP/ZeRO-3 recipes set 10) and then aborts with
a message that does not say which rank is missing; gloo fails within seconds with "Connection closed
by peer". :class:`LostRankWatchdog` (added to every fit by ``LanguageModelModule.configure_callbacks``
when there is more than one rank) makes both cases end the same way, early and with a name:

* each rank runs a daemon thread that adds 1 to its own counter in the default process group's
  store every ``interval`` seconds (a thread: it keeps beating while the main thread waits inside
  a collective, or computes);
* rank 0 watches every rank's counter, the others watch rank 0's; a counter that has not moved for
  ``lost_after`` seconds (measured on the watcher's own clock: no clock is compared across hosts)
  means that rank is lost. An unreachable store means rank 0's host is gone (the store lives there).
  The first verdict is written to the store (first writer wins) and every rank reads it;
* a rank that raises an ordinary exception publishes it as the verdict before it exits, so the
  others name it and its error instead of a broken connection;
* on a verdict, each surviving rank prints one line (which rank, why, how to resume) and exits
  with status 1 (``os._exit``: the main thread may be blocked inside a collective that would only
  return at the timeout). A rank that finished cleanly says so first, so finishing at different
  times is not a loss.

``lost_after`` defaults to min(60 s, half the strategy's collective timeout): a lost rank is named
well before the timeout would fire. The collective timeout stays the backstop for hangs in which
every process is alive (a rank stuck in a deadlock keeps beating). Imports only torch and Lightning.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import sys
import threading
import time
from typing import Optional

import lightning as L

log = logging.getLogger(__name__)

#: exit status of a rank that stops because another rank was lost
LOST_RANK_EXIT = 1
_fits_in_process = [0]  # per-process fit counter: the same sequence on every rank -> one key prefix per fit


def _is_comm_error(err: BaseException) -> bool:
    """An exception that is (probably) the echo of a lost peer, not a fault of this rank."""
    import torch.distributed as dist

    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    text = str(err)
    return any(s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                                   "gloo", "NCCL", "timed out", "Timed out"))


class LostRankWatchdog(L.Callback):
    """Heartbeats per rank; a lost rank ends every other rank within ``lost_after`` seconds with
    one line naming it (see the module docstring).

    Args:
        interval: seconds between heartbeats (default: ``lost_after`` / 5, at most 5 s).
        lost_after: a rank whose heartbeat has not moved for this long is lost (default: min(60 s,
            half the strategy's collective timeout)).
    """

    def __init__(self, interval: Optional[float] = None, lost_after: Optional[float] = None) -> None:
        self.interval, self.lost_after = interval, lost_after
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._store = None
        self._verdict_seen = threading.Event()

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        import torch.distributed as dist

        if self._thread is not None or trainer.world_size < 2 or not dist.is_available() or not dist.is_initialized():
            return
        timeout = getattr(trainer.strategy, "_timeout", None)
        timeout_s = timeout.total_seconds() if isinstance(timeout, dt.timedelta) else 1800.0
        lost_after = self.lost_after or min(60.0, timeout_s / 2)
        interval = self.interval or min(5.0, lost_after / 5)
        self._rank, self._world, self._interval, self._lost_after = (trainer.global_rank, trainer.world_size,
                                                                     interval, lost_after)
        _fits_in_process[0] += 1
        try:
            store = dist.distributed_c10d._get_default_store()
        except Exception as err:  # noqa: BLE001 -- a process group without a store: no watchdog, say so
            log.warning("lost-rank watchdog off: no rendezvous store (%s: %s)", type(err).__name__, err)
            return
        self._store = dist.PrefixStore(f"lightning_redllm/watchdog/{_fits_in_process[0]}/", store)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="lightning_redllm-watchdog", daemon=True)
        self._thread.start()

    def on_exception(self, trainer: "L.Trainer", pl_module: "L.LightningModule", exception: BaseException) -> None:
        if self._thread is None:
            return
        if isinstance(exception, KeyboardInterrupt) or not _is_comm_error(exception):
            # this rank's own fault: name it for the others (they would only see a broken connection)
            self._finish(done=False)
            first = str(exception).splitlines()[0][:300] if str(exception) else ""
            self._publish(f"rank {self._rank} stopped with {type(exception).__name__}: {first}")
            return
        # a broken connection: give the heartbeats time to say who is gone (the thread exits the
        # process on a verdict); if none comes, let Lightning report the exception as it is
        self._verdict_seen.wait(self._lost_after + 3 * self._interval)
        self._finish(done=False)

    def teardown(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        """A clean end: say so (finishing later than another rank is no loss). Rank 0's host holds
        the store, so rank 0 leaves last: it waits (at most ``lost_after``) until every rank said so."""
        self._finish(done=True)

    # ------------------------------------------------------------------ the thread
    def _publish(self, verdict: str) -> None:
        try:
            self._store.compare_set("verdict", "", verdict)
        except Exception:  # noqa: BLE001 -- store gone: nothing to tell anyone
            pass

    def _finish(self, done: bool) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread = None
        if not done:
            return
        try:
            self._store.set(f"done/{self._rank}", "1")
            if self._rank == 0:
                others = [f"done/{r}" for r in range(1, self._world)]
                self._store.wait(others, dt.timedelta(seconds=self._lost_after))
        except Exception:  # noqa: BLE001 -- a rank that never says done is not worth a failed run here
            pass

    def _run(self) -> None:
        rank, world, interval, lost_after = self._rank, self._world, self._interval, self._lost_after
        store = self._store
        watched = range(world) if rank == 0 else [0]
        last = {r: (-1, time.monotonic()) for r in watched if r != rank}
        while not self._stop.wait(interval):
            try:
                store.add(f"beat/{rank}", 1)
                verdict = None
                if store.check(["verdict"]):
                    verdict = store.get("verdict").decode()
                else:
                    now = time.monotonic()
                    for r, (count, since) in list(last.items()):
                        if store.check([f"done/{r}"]):
                            del last[r]
                            continue
                        current = store.add(f"beat/{r}", 0)
                        if current != count:
                            last[r] = (current, now)
                        elif now - since > lost_after:
                            verdict = (f"rank {r} lost: no heartbeat for {now - since:.0f} s "
                                       "(killed, out of memory, or its host unreachable)")
                            self._publish(verdict)
                            verdict = store.get("verdict").decode()  # another rank's may have come first
                            break
            except Exception as err:  # noqa: BLE001 -- the store (on rank 0's host) is gone
                if self._stop.is_set():
                    return
                verdict = f"rank 0 lost: the rendezvous store on its host is unreachable ({type(err).__name__})"
            if verdict and not self._stop.is_set():
                self._verdict_seen.set()
                _exit_lost(rank, world, verdict)


def _exit_lost(rank: int, world: int, verdict: str) -> None:
    sys.stdout.flush()
    print(f"error: {verdict}; rank {rank} of {world} stops too (exit {LOST_RANK_EXIT}). Resume the run with "
          "--ckpt_path last.", file=sys.stderr, flush=True)
    os._exit(LOST_RANK_EXIT)


__all__ = ["LostRankWatchdog", "LOST_RANK_EXIT"]
