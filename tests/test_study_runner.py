"""The study's stage runner with fake stages: markers written atomically after each stage, a rerun
after a kill skips what finished, a failed stage runs again, --redo / --only by prefix."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_redllm.study.runner import StageRunner, StudyLog

NAMES = ["pretrain/a-s", "pretrain/b-s", "eval/x", "eval/xy", "report"]


class Killed(Exception):
    """Stands in for SIGKILL in-process."""


def _kill():
    raise Killed


def _stages(calls: list, fail: str = "") -> list:
    def make(name):
        def fn():
            calls.append(name)
            if name == fail:
                raise RuntimeError(f"{name} broke")
            return f"summary of {name}"
        return fn
    return [(n, make(n)) for n in NAMES]


def _runner(tmp_path: Path, log: list, **kw) -> StageRunner:
    return StageRunner(tmp_path / ".study", log.append, **kw)


def test_resume_after_a_kill_skips_finished_stages(tmp_path):
    calls, log = [], []
    with pytest.raises(Killed):
        _runner(tmp_path, log, kill_after="pretrain/b-s", kill=_kill).run(_stages(calls))
    assert calls == ["pretrain/a-s", "pretrain/b-s"]  # killed right after the second stage was recorded
    marks = tmp_path / ".study"
    assert sorted(p.name for p in marks.iterdir()) == ["pretrain__a-s.json", "pretrain__b-s.json"]  # no temp files
    m = json.loads((marks / "pretrain__b-s.json").read_text())
    assert m["stage"] == "pretrain/b-s" and m["summary"] == "summary of pretrain/b-s" and m["seconds"] >= 0

    calls.clear()
    log.clear()
    _runner(tmp_path, log).run(_stages(calls))
    assert calls == ["eval/x", "eval/xy", "report"]
    assert "1/5 pretrain/a-s: done before (summary of pretrain/a-s), skipped" in log
    assert "3/5 eval/x: running" in log and any(line.startswith("5/5 report: done in ") for line in log)
    assert len(list(marks.iterdir())) == 5

    calls.clear()
    _runner(tmp_path, log).run(_stages(calls))
    assert calls == []  # nothing left to do


def test_a_failed_stage_leaves_no_marker_and_runs_again(tmp_path):
    calls, log = [], []
    with pytest.raises(RuntimeError, match="eval/x broke"):
        _runner(tmp_path, log).run(_stages(calls, fail="eval/x"))
    runner = _runner(tmp_path, log)
    assert runner.done("pretrain/b-s") is not None and runner.done("eval/x") is None
    calls.clear()
    runner.run(_stages(calls))
    assert calls == ["eval/x", "eval/xy", "report"]


def test_redo_and_only_match_prefixes(tmp_path):
    calls, log = [], []
    runner = _runner(tmp_path, log)
    runner.run(_stages(calls))
    runner.redo(NAMES, ["eval/x"])  # a prefix: eval/x and eval/xy
    assert "eval/x: marker removed, will run again" in log and "eval/xy: marker removed, will run again" in log
    assert runner.done("eval/x") is None and runner.done("eval/xy") is None and runner.done("report") is not None
    runner.redo(NAMES, ["pretrain/"])
    calls.clear()
    runner.run(_stages(calls), only=["eval"])
    assert calls == ["eval/x", "eval/xy"]  # the forgotten pretrain stages wait: not in --only
    calls.clear()
    runner.run(_stages(calls))
    assert calls == ["pretrain/a-s", "pretrain/b-s"]


def test_an_unreadable_marker_means_not_done(tmp_path):
    runner = _runner(tmp_path, [])
    runner.marker("eval/x").parent.mkdir(parents=True)
    runner.marker("eval/x").write_text('{"stage": "eval/x", "summ')  # hand-edited
    assert runner.marker("eval/x").name == "eval__x.json" and runner.done("eval/x") is None
    calls = []
    runner.run(_stages(calls), only=["eval/x"])
    assert calls == ["eval/x", "eval/xy"] and runner.done("eval/x")["summary"] == "summary of eval/x"


def test_log_lines_carry_the_elapsed_time():
    lines = []
    log = StudyLog(lines.append)
    log.start -= 125
    log("hello")
    assert lines == ["[study 2:05] hello"]


def test_kill_after_kills_the_process_after_the_marker(tmp_path):
    """The default hook is a real SIGKILL (what the end-to-end study test relies on)."""
    code = ("import sys; from pathlib import Path; from lightning_redllm.study.runner import StageRunner\n"
            "r = StageRunner(Path(sys.argv[1]), print, kill_after='b')\n"
            "r.run([(n, lambda: 'ok') for n in 'abc'])\n")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert p.returncode == -9, p.stderr[-2000:]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a.json", "b.json"]


def test_a_write_that_fails_half_way_leaves_the_old_file(tmp_path):
    from lightning_redllm.study.files import write_json_atomic

    path = tmp_path / "m.json"
    write_json_atomic(path, {"summary": "old", "where": tmp_path})
    assert json.loads(path.read_text()) == {"summary": "old", "where": str(tmp_path)}
    with pytest.raises(TypeError, match="not JSON serializable: object"):
        write_json_atomic(path, {"summary": "new", "bad": object()})  # json.dump dies after writing a prefix
    assert json.loads(path.read_text()) == {"summary": "old", "where": str(tmp_path)}
