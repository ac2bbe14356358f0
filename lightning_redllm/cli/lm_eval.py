"""lm-eval's own command line, with the ``lightning_redllm`` model registered and the bundled tasks
included::

    python -m lightning_redllm.lm_eval --model lightning_redllm \\
        --model_args checkpoint=runs/x/last.ckpt,batch_size=8 --tasks bundled_continuation_mc --num_fewshot 5

Why a wrapper: lm-eval 0.4.13 finds models only in its own registry (no plugin discovery), so a
bare ``lm_eval --model lightning_redllm`` cannot see this package. This module registers the
adapter, adds the bundled task folder to ``--include_path`` (a user's folder is kept too), and
hands every argument to lm-eval's CLI unchanged (``--output_path``, ``--log_samples``, ... work).

Also home of ``python -m lightning_redllm evaluate --tasks ...`` (:func:`evaluate_tasks`), kept here
so the subcommand imports lm-eval only in that mode.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .output import print_and_save


def quiet_git_probe() -> None:
    """lm-eval records the git commit of the working directory by running ``git describe``, whose
    ``fatal: not a git repository`` reaches the terminal outside a repository (lm-eval then reads
    ``.git`` itself). Same lookup, the probe's stderr silenced. Idempotent."""
    import os
    import subprocess

    import lm_eval.evaluator as evaluator
    from lm_eval.loggers.utils import get_commit_from_path

    if getattr(evaluator.get_git_commit_hash, "__module__", "") == __name__:
        return

    def get_git_commit_hash():
        try:
            return subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL).strip().decode()
        except (subprocess.CalledProcessError, FileNotFoundError):
            return get_commit_from_path(os.getcwd())

    evaluator.get_git_commit_hash = get_git_commit_hash


def evaluate_tasks(p: argparse.ArgumentParser, a: argparse.Namespace) -> int:
    """``evaluate --tasks``: run lm-eval tasks on ``--ckpt``, print a table, write ``--out``."""
    problem = None
    for flag in ("shards", "lengths", "prefix_len", "max_sequences"):
        if getattr(a, flag) is not None:
            problem = f"--{flag} belongs to the perplexity mode; it does not apply with --tasks"
    tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
    if not tasks:
        problem = "--tasks needs at least one task name"
    elif a.num_fewshot < 0:
        problem = f"--num_fewshot must be >= 0, got {a.num_fewshot}"
    elif a.limit is not None and a.limit < 1:
        problem = f"--limit must be >= 1, got {a.limit}"
    elif a.batch_size < 1:
        problem = f"--batch_size must be >= 1, got {a.batch_size}"
    if problem:  # one line, as generate's option errors
        print(f"{p.prog}: error: {problem}", file=sys.stderr)
        return 2
    if not Path(a.ckpt).exists():
        raise FileNotFoundError(f"checkpoint not found: {a.ckpt}")
    try:
        from ..eval.lm_eval_adapter import format_lm_eval_table, run_lm_eval
    except ImportError as err:
        print(f"{p.prog}: error: {err}", file=sys.stderr)
        return 2
    quiet_git_probe()
    res = run_lm_eval(a.ckpt, tasks, a.num_fewshot, limit=a.limit, batch_size=a.batch_size, device=a.device,
                      include_path=a.include_path, tokenizer=a.tokenizer)
    print_and_save(format_lm_eval_table(res), res, a.out)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        from ..eval.lm_eval_adapter import BUNDLED_TASKS_DIR  # registers "lightning_redllm"
    except ImportError as err:
        print(f"python -m lightning_redllm.lm_eval: error: {err}", file=sys.stderr)
        return 2
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    setup_logging()
    quiet_git_probe()
    cli = HarnessCLI()
    sys.argv = ["lm_eval", *args]  # HarnessCLI reads sys.argv (and inserts the default `run`)
    ns = cli.parse_args()
    if hasattr(ns, "include_path"):  # the run subcommand (also the default one)
        # lm-eval's TaskManager takes a list of folders; its CLI flag only one
        ns.include_path = [str(BUNDLED_TASKS_DIR)] + ([ns.include_path] if ns.include_path else [])
    cli.execute(ns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
