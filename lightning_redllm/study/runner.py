"""The stage runner: runs named stages in order, each one at most once across reruns.

Every stage ends by writing a marker ``<marks>/<stage with / as __>.json`` atomically (temp file +
rename), after its results. A rerun skips every stage with a marker, so a study killed at any point
resumes where it stopped. ``redo`` drops the markers of the stages matching a prefix; ``only``
restricts a run to the stages matching a prefix. The runner knows nothing about what a stage does:
a stage is a name and a function returning a one-line summary.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .files import write_json_atomic

#: set to a stage name, the study kills itself (SIGKILL) right after that stage's marker is written
KILL_AFTER_ENV = "LIGHTNING_REDLLM_STUDY_KILL_AFTER"


class StudyLog:
    """``[study m:ss] message`` lines, the time counted from construction."""

    def __init__(self, sink: Callable[[str], None] = print):
        self.sink = sink
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def __call__(self, msg: str) -> None:
        el = int(self.elapsed())
        self.sink(f"[study {el // 60:d}:{el % 60:02d}] {msg}")


def _sigkill() -> None:
    os.kill(os.getpid(), 9)


class StageRunner:
    """Markers under ``marks``; ``kill_after`` names the stage after which ``kill`` is called (a test hook:
    by default the process dies the way a kill does, right after that stage was recorded)."""

    def __init__(self, marks: Path, log: Callable[[str], None], kill_after: Optional[str] = None,
                 kill: Callable[[], Any] = _sigkill):
        self.marks = Path(marks)
        self.log = log
        self.kill_after = kill_after
        self.kill = kill

    def marker(self, stage: str) -> Path:
        return self.marks / (stage.replace("/", "__") + ".json")

    def done(self, stage: str) -> Optional[dict]:
        """The marker of a finished stage (None if it has not finished)."""
        m = self.marker(stage)
        if not m.exists():
            return None
        try:
            return json.loads(m.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # a torn marker cannot exist (atomic rename), but a hand-edited one may: redo

    def redo(self, stages: Sequence[str], prefixes: Sequence[str]) -> None:
        """Forget the stages starting with any of ``prefixes``: they run again."""
        for stage in stages:
            if any(stage.startswith(p) for p in prefixes) and self.marker(stage).exists():
                self.marker(stage).unlink()
                self.log(f"{stage}: marker removed, will run again")

    def run(self, stages: Sequence[tuple[str, Callable[[], Any]]], only: Optional[Sequence[str]] = None) -> None:
        """Run every stage without a marker (of those starting with a prefix in ``only``, when given)."""
        n = len(stages)
        for i, (stage, fn) in enumerate(stages, 1):
            if only and not any(stage.startswith(o) for o in only):
                continue
            prev = self.done(stage)
            if prev is not None:
                self.log(f"{i}/{n} {stage}: done before ({prev.get('summary', '')}), skipped")
                continue
            self.log(f"{i}/{n} {stage}: running")
            t0 = time.monotonic()
            summary = fn()
            secs = time.monotonic() - t0
            write_json_atomic(self.marker(stage), {"stage": stage, "seconds": secs, "finished": time.time(),
                                                   "summary": summary or ""})
            self.log(f"{i}/{n} {stage}: done in {secs:.0f} s{f' ({summary})' if summary else ''}")
            if self.kill_after and stage == self.kill_after:
                self.kill()
