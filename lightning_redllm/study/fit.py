"""The fit runner: the study's training runs, each through the real ``fit`` command in a subprocess.

A run's command line is the stage's recipes (``configs``) in order, then ``model/<family>-<preset>``
(it sets the class), the size's and the stage's ModelConfig overrides, then the stage's ``args``
(dotted flags), the size's budget (``--trainer.max_steps``, ``--model.init_args.lr``; see
``plan.size_budgets``), the run's seed (``--seed_everything`` and ``--data.init_args.seed``: the same
for both families of a pair, so they start from the same seed and see the same batches), an
ablation's own ``args`` last, then ``--trainer.default_root_dir <run folder>``. A run folder that already holds
``checkpoints/last.ckpt`` (a run killed mid-way) continues from it with ``--ckpt_path last``. The
command is written to ``command.txt`` and its output appended to ``fit.log``; afterwards
``last.ckpt`` must hold the final step, because every later stage reads it.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from .config import ABLATIONS, VARIANTS, Size, StudyError, args_list
from .files import write_json_atomic
from .plan import Run, run_dir, run_label, size_budgets


class FitRunner:
    def __init__(self, cfg: dict, *, python: str = sys.executable, log: Callable[[str], None] = print):
        self.cfg = cfg
        self.runs = Path(cfg["runs_dir"])
        self.python = python
        self.log = log

    # -- command lines -------------------------------------------------------------------------
    def model_args(self, fam: str, size: Size, extra_overrides: Optional[dict] = None,
                   stage: Optional[dict] = None) -> list[str]:
        overrides = dict(size.overrides)
        overrides.update((stage or {}).get("model_overrides") or {})
        overrides.update(extra_overrides or {})
        args = ["--config", f"model/{size.preset_for(fam)}"]
        if overrides:
            args += ["--model.init_args.overrides", json.dumps(overrides)]
        return args

    @staticmethod
    def seed_args(seed: Optional[int]) -> list[str]:
        """The run's seed for the initialization and for the data order (none without study seeds)."""
        return [] if seed is None else ["--seed_everything", str(seed), "--data.init_args.seed", str(seed)]

    def budget_args(self, size: Size) -> list[str]:
        b = size_budgets(self.cfg)[size.name]
        return ([] if b.max_steps is None else ["--trainer.max_steps", str(b.max_steps)]) + \
            ([] if b.lr is None else ["--model.init_args.lr", str(b.lr)])

    def pretrain_args(self, fam: str, size: Size, seed: Optional[int] = None,
                      extra_overrides: Optional[dict] = None) -> tuple[Path, list[str], list[str]]:
        """(run folder, recipes, extra CLI words) of one pretraining run."""
        st = self.cfg["pretrain"]
        # the model recipe goes after the stage recipes (it sets the class); overrides after it
        return (run_dir(self.cfg, "pretrain", run_label(fam, size, seed)), list(st.get("configs") or []),
                [*self.model_args(fam, size, extra_overrides, stage=st), *args_list(st.get("args")),
                 *self.budget_args(size), *self.seed_args(seed)])

    def ablation_args(self, arm: str, size: Size, seed: Optional[int] = None) -> tuple[Path, list[str], list[str]]:
        """(run folder, recipes, extra CLI words) of one ablation run: the pretraining run of its family with
        the arm's ModelConfig overrides, then the ablation's ``args`` (they win: later flags override)."""
        name = next(n for n, arms in ABLATIONS.items() if arm in arms)
        fam, overrides = ABLATIONS[name][arm]
        _, configs, extra = self.pretrain_args(fam, size, seed, overrides)
        return (run_dir(self.cfg, "ablation", run_label(arm, size, seed)), configs,
                [*extra, *args_list(self.cfg["ablations"][name].get("args"))])

    def instruct_args(self, variant: str, size: Size, seed: Optional[int] = None) -> tuple[Path, list[str], list[str]]:
        """(run folder, recipes, extra CLI words) of one instruction-tuning run (from the same seed's
        pretrained model)."""
        fam, biattn = VARIANTS[variant]
        ins = self.cfg["instruct"]
        init = run_dir(self.cfg, "pretrain", run_label(fam, size, seed)) / "checkpoints" / "last.ckpt"
        data = self.runs / "data"
        extra = [*self.model_args(fam, size, stage=ins), "--model.init_args.init_from", str(init),
                 "--data.init_args.train_shards", str(data / "instruct-train"),
                 "--data.init_args.val_shards", str(data / "instruct-val")]
        if biattn:
            extra += ["--model.init_args.bidirectional_prefix", "true"]
        return run_dir(self.cfg, "instruct", run_label(variant, size, seed)), list(ins.get("configs") or []), \
            [*extra, *args_list(ins.get("args")), *self.seed_args(seed)]

    @staticmethod
    def fit_args(root: Path, configs: Sequence[str], extra: Sequence[str], resume: bool) -> list[str]:
        """The words after ``python -m lightning_redllm`` of one run."""
        args = ["fit"]
        for c in configs:
            args += ["--config", c]
        args += list(extra) + ["--trainer.default_root_dir", str(root)]
        if resume:
            args += ["--ckpt_path", "last"]  # a run killed mid-way continues exactly where it stopped
        return args

    # -- running -------------------------------------------------------------------------------
    def fit(self, root: Path, configs: Sequence[str], extra: Sequence[str], *, may_diverge: bool = False) -> None:
        """Run one ``fit``; ``may_diverge``: a run stopped by its non-finite-loss guard (``NonFiniteLossError``,
        a ``nonfinite-step<N>.ckpt`` in the run folder) is an outcome, recorded in ``outcome.json``, not an error."""
        resume = (root / "checkpoints" / "last.ckpt").exists()
        args = self.fit_args(root, configs, extra, resume)
        if resume:
            self.log(f"  resuming {root} from its last.ckpt")
        root.mkdir(parents=True, exist_ok=True)
        (root / "command.txt").write_text(shlex.join([self.python, "-m", "lightning_redllm", *args]) + "\n")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        started = time.time()
        with open(root / "fit.log", "a") as logf:
            r = subprocess.run([self.python, "-m", "lightning_redllm", *args], stdout=logf, stderr=subprocess.STDOUT,
                               env=env)
        # this attempt's guard checkpoint (one left by an earlier, killed attempt says nothing about this one)
        stopped = sorted(p for p in root.glob("nonfinite-step*.ckpt") if p.stat().st_mtime >= started - 1)
        if r.returncode != 0 and may_diverge and stopped:
            step = int(stopped[-1].stem.rsplit("step", 1)[1])
            write_json_atomic(root / "outcome.json", {"stopped_nonfinite": True, "step": step,
                                                      "returncode": r.returncode})
            self.log(f"  {root.name}: stopped by the non-finite-loss guard at step {step}")
            return
        if r.returncode != 0:
            tail = (root / "fit.log").read_text().strip().splitlines()[-5:]
            raise StudyError(f"fit into {root} failed (exit {r.returncode}); see {root / 'fit.log'}:\n  " + "\n  ".join(tail))
        self.check_final_checkpoint(root, args)
        if may_diverge:
            write_json_atomic(root / "outcome.json", {"stopped_nonfinite": False, "returncode": 0})

    @staticmethod
    def check_final_checkpoint(root: Path, args: Sequence[str]) -> None:
        """Everything downstream reads ``last.ckpt``: it must hold the final step, not the last periodic save
        (a recipe's ``ModelCheckpoint(every_n_train_steps=N)`` does not save at the end of training)."""
        from ..reliability import load_torch_file

        ckpt = root / "checkpoints" / "last.ckpt"
        if not ckpt.exists():
            raise StudyError(f"fit into {root} wrote no checkpoints/last.ckpt")
        if "--trainer.max_steps" in args:
            want = int(args[len(args) - 1 - args[::-1].index("--trainer.max_steps") + 1])
            got = int(load_torch_file(ckpt, mmap=True).get("global_step", -1))
            if got != want:
                raise StudyError(f"{ckpt} holds step {got}, not the final step {want}: the checkpoint callback saves "
                                 f"every N steps and not at the end; make trainer.max_steps a multiple of N")

    # -- the training stages -------------------------------------------------------------------
    def pretrain(self, run: Run) -> str:
        root, configs, extra = self.pretrain_args(run.name, run.size, run.seed)
        self.fit(root, configs, extra)
        return _val_loss(root)

    def ablation(self, run: Run) -> str:
        root, configs, extra = self.ablation_args(run.name, run.size, run.seed)
        self.fit(root, configs, extra, may_diverge=True)
        outcome = json.loads((root / "outcome.json").read_text())
        if outcome["stopped_nonfinite"]:
            return f"stopped: non-finite loss at step {outcome['step']}"
        return _val_loss(root)

    def instruct_data(self) -> str:
        """Instruction shards without the held-out tasks (train and validation), from the FLAN-format jsonl."""
        from data_pipelines.flan import convert_flan

        from .scoring import read_flan

        ins = self.cfg["instruct"]
        held = set(ins.get("held_out_tasks") or [])
        out = self.runs / "data"
        counts = {}
        for split in ("train", "val"):
            rows = [r for r in read_flan(split, ins.get("corpus")) if r["task_name"] not in held]
            if not rows:
                raise StudyError(f"instruct: no {split} examples left after holding out {sorted(held)}")
            src = out / f"instruct-{split}.jsonl"
            src.parent.mkdir(parents=True, exist_ok=True)
            src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            convert_flan([src], out / f"instruct-{split}", ins.get("tokenizer", "bundled-bpe-4k"), overwrite=True,
                         progress=False)
            counts[split] = len(rows)
        return f"{counts['train']} train / {counts['val']} val examples, held out: {', '.join(sorted(held)) or 'none'}"

    def instruct(self, run: Run) -> str:
        root, configs, extra = self.instruct_args(run.name, run.size, run.seed)
        init = Path(extra[extra.index("--model.init_args.init_from") + 1])
        if not init.exists():
            raise StudyError(f"instruct {run.label}: pretrained checkpoint {init} is missing")
        self.fit(root, configs, extra)
        return _val_loss(root)


def _val_loss(root: Path) -> str:
    from ..eval.scaling import last_metric

    loss = last_metric(root, "val/loss")
    return f"val/loss {loss:.3f}" if loss is not None else "no val/loss logged"
