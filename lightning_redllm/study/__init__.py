"""``python -m lightning_redllm study --config recipes/study/cpu-mini.yaml``: the study, end to end.

Trains RedLLM and DecLLM at several sizes through the real ``fit`` command (one subprocess per run,
recipes + dotted overrides, each in its own run folder), instruction-tunes every pretrained model
(RedLLM, DecLLM and DecLLM + BiAttn) on the bundled instruction set with some tasks held out
entirely, evaluates everything (per-source held-out perplexity, the same tokens scored for both
families, length extrapolation, inference efficiency, held-out instruction tasks, lm-eval tasks),
fits the scaling laws and writes ``report.md``.

Every stage ends by writing a marker ``<out_dir>/.study/<stage>.json`` atomically (temp file +
rename), after its results. A rerun skips every stage with a marker, so a study killed at any point
resumes where it stopped; a training run killed mid-way resumes from its own ``last.ckpt``.
``--redo STAGE`` (repeatable, prefix match) drops markers first.

The study file is YAML (not a Lightning config; see ``recipes/study/cpu-mini.yaml`` for every key).

The rooms, bottom to top (each imports only from the ones above it in this list):

    config.py        the study file: keys, defaults, checks (StudyError names the file and key)
    files.py         atomic JSON writes (results and markers)
    plan.py          the runs and the ordered stages of a config; pure (``--dry_run`` prints it)
    runner.py        markers, done / redo / only, the run loop, the kill-after test hook
    scoring.py       FLAN-format splits, target loss per pair, multiple-choice accuracy
    report.py        ``python -m lightning_redllm report``: a markdown page from a folder
    fit.py           the training stages: the ``fit`` command line, its subprocess, the final-step check
    evaluations/     one module per evaluation, each ``evaluation(ctx) -> summary`` (context.py: ctx)
    report_stage.py  the last stage: curves, study.json, report.md
    driver.py        ``Study``: plan -> runner -> training, evaluations -> report
    command.py       ``study_main``: the ``study`` subcommand's flags
"""
from __future__ import annotations

from .command import study_main
from .config import (EVAL_KEYS, INSTRUCT_KEYS, KNOWN_KEYS, STAGE_KEYS, VARIANTS, Size, StudyError, load_study_config,
                     parse_sizes)
from .driver import Study
from .scoring import option_accuracy, options_of, read_flan, score_pairs

__all__ = ["EVAL_KEYS", "INSTRUCT_KEYS", "KNOWN_KEYS", "STAGE_KEYS", "VARIANTS", "Size", "Study", "StudyError",
           "load_study_config", "option_accuracy", "options_of", "parse_sizes", "read_flan", "score_pairs",
           "study_main"]
