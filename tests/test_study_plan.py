"""The study's plan: the ordered stages and the runs of a config, computed without running or writing
anything; `study --dry_run` prints it with each stage's state."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_redllm.study import EVAL_KEYS, Study, load_study_config, study_main
from lightning_redllm.study.evaluations import EVALUATIONS
from lightning_redllm.study.plan import instruct_runs, plan_stages, pretrain_runs

FULL = """
name: planned
out_dir: OUT
families: [redllm, decllm]
sizes: {s: {preset: tiny, overrides: {d_model: 32}}, m: {preset: tiny, overrides: {d_model: 64}}}
pretrain: {configs: [quickstart], args: {trainer.max_steps: 3}}
instruct: {variants: [redllm, decllm_biattn], held_out_tasks: [t1]}
evaluate: {perplexity: {}, extrapolation: {}, efficiency: {}, instruct: {}, lm_eval: {}, scaling: {}}
"""


def _cfg(tmp_path: Path, text: str = FULL, **patch) -> dict:
    path = tmp_path / "study.yaml"
    path.write_text(text.replace("OUT", str(tmp_path / "out")))
    cfg = load_study_config(path)
    cfg.update(patch)
    return cfg


def test_plan_of_a_full_config(tmp_path):
    cfg = _cfg(tmp_path)
    stages = plan_stages(cfg)
    assert [s.name for s in stages] == [
        "pretrain/redllm-s", "pretrain/decllm-s", "pretrain/redllm-m", "pretrain/decllm-m",
        "instruct/data", "instruct/redllm-s", "instruct/decllm_biattn-s", "instruct/redllm-m", "instruct/decllm_biattn-m",
        "eval/perplexity", "eval/extrapolation", "eval/efficiency", "eval/instruct", "eval/lm_eval",
        "eval/quality_flops", "scaling", "report"]
    by_name = {s.name: s for s in stages}
    runs = tmp_path / "out" / "runs"
    first = by_name["pretrain/redllm-s"]
    assert first.action == "pretrain" and first.run.name == "redllm" and first.run.size.name == "s"
    assert first.run.ckpt == runs / "pretrain" / "redllm-s" / "checkpoints" / "last.ckpt"
    assert first.run.root == runs / "pretrain" / "redllm-s"
    tuned = by_name["instruct/decllm_biattn-m"]
    assert tuned.action == "instruct" and tuned.run.ckpt == runs / "instruct" / "decllm_biattn-m" / "checkpoints" / "last.ckpt"
    assert by_name["scaling"].evaluation == "scaling" and by_name["eval/quality_flops"].evaluation == "quality_flops"
    assert [r.label for r in pretrain_runs(cfg)] == ["redllm-s", "decllm-s", "redllm-m", "decllm-m"]
    assert [r.label for r in instruct_runs(cfg)] == ["redllm-s", "decllm_biattn-s", "redllm-m", "decllm_biattn-m"]
    # planning (and building the driver) reads and writes nothing
    study = Study(cfg, log=lambda m: None)
    assert [s for s, _ in study.stages] == [s.name for s in stages]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["instruct disabled", "variant without its family", "no perplexity",
                                  "perplexity without scaling", "nothing to evaluate"])
def test_plan_follows_the_config(tmp_path, case):
    cfg = _cfg(tmp_path)
    ev = cfg["evaluate"]
    if case == "instruct disabled":
        cfg["instruct"]["enabled"] = False
    elif case == "variant without its family":
        cfg["families"], cfg["instruct"]["variants"] = ["redllm"], ["decllm_biattn"]
    elif case == "no perplexity":
        del ev["perplexity"]
    elif case == "perplexity without scaling":
        del ev["scaling"]
    else:
        cfg["evaluate"] = {}
    names = [s.name for s in plan_stages(cfg)]
    tuned = [n for n in names if n.startswith("instruct/") and n != "instruct/data"]
    if case == "instruct disabled":
        assert not tuned and "instruct/data" not in names and "eval/instruct" not in names
    elif case == "variant without its family":
        # the data stage is planned (a variant is asked for) but no run: DecLLM is not pretrained
        assert "instruct/data" in names and not tuned and "eval/instruct" not in names
        assert [n for n in names if n.startswith("pretrain/")] == ["pretrain/redllm-s", "pretrain/redllm-m"]
    elif case == "no perplexity":  # quality_flops and scaling read perplexity.json
        assert "eval/quality_flops" not in names and "scaling" not in names and "eval/extrapolation" in names
    elif case == "perplexity without scaling":
        assert "eval/quality_flops" in names and "scaling" not in names
    else:
        assert [n for n in names if not n.startswith(("pretrain/", "instruct/"))] == ["report"]
    assert names[-1] == "report"


def test_every_evaluation_key_has_an_evaluation():
    assert set(EVALUATIONS) == EVAL_KEYS


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path, capsys):
    cfg_path = tmp_path / "study.yaml"
    cfg_path.write_text(FULL.replace("OUT", str(tmp_path / "out")))
    marks = tmp_path / "out" / ".study"
    marks.mkdir(parents=True)
    (marks / "pretrain__redllm-s.json").write_text(json.dumps({"stage": "pretrain/redllm-s", "summary": "x"}))
    assert study_main(["--config", str(cfg_path), "--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 17
    assert lines[0].split() == ["1", "pretrain/redllm-s", "done"]
    assert lines[1].split() == ["2", "pretrain/decllm-s", "to", "do"]
    assert lines[-1].split() == ["17", "report", "to", "do"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".study"]  # no runs folder, no results
