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
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

KNOWN_KEYS = {"name", "description", "out_dir", "runs_dir", "families", "sizes", "pretrain", "instruct", "evaluate",
              "device", "seed"}
STAGE_KEYS = {"configs", "args", "model_overrides"}
INSTRUCT_KEYS = STAGE_KEYS | {"variants", "held_out_tasks", "corpus", "tokenizer", "enabled"}
EVAL_KEYS = {"perplexity", "extrapolation", "efficiency", "instruct", "lm_eval", "scaling", "quality_flops"}
VARIANTS = {"redllm": ("redllm", False), "decllm": ("decllm", False), "decllm_biattn": ("decllm", True)}


class StudyError(ValueError):
    """A study configuration or stage error a user can act on."""


# ------------------------------------------------------------------------------------------------
# configuration


@dataclass
class Size:
    name: str
    preset: str  # size part of the preset name: tiny, 150m, ...
    overrides: dict

    def preset_for(self, family: str) -> str:
        return f"{family}-{self.preset}"


def load_study_config(path: str | Path) -> dict:
    """Read and check a study YAML; paths in it are relative to the current directory."""
    import yaml

    from .cli import resolve_recipe

    resolved = Path(resolve_recipe(str(path)))
    try:
        cfg = yaml.safe_load(resolved.read_text())
    except yaml.YAMLError as err:
        raise StudyError(f"{resolved}: YAML syntax error: {' '.join(str(err).split())}") from None
    if not isinstance(cfg, dict):
        raise StudyError(f"{resolved}: a study config is a mapping, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - KNOWN_KEYS)
    if unknown:
        raise StudyError(f"{resolved}: unknown key(s) {unknown}; known: {sorted(KNOWN_KEYS)}")
    for key in ("name", "out_dir", "sizes", "pretrain"):
        if key not in cfg:
            raise StudyError(f"{resolved}: missing key {key!r}")
    cfg.setdefault("families", ["redllm", "decllm"])
    bad = [f for f in cfg["families"] if f not in ("redllm", "decllm")]
    if bad:
        raise StudyError(f"{resolved}: families must be redllm/decllm, got {bad}")
    cfg.setdefault("runs_dir", str(Path(cfg["out_dir"]) / "runs"))
    cfg.setdefault("device", "cpu")
    for key, allowed in (("pretrain", STAGE_KEYS), ("instruct", INSTRUCT_KEYS), ("evaluate", EVAL_KEYS)):
        section = cfg.get(key) or {}
        if not isinstance(section, dict):
            raise StudyError(f"{resolved}: {key} must be a mapping")
        extra = sorted(set(section) - allowed)
        if extra:
            raise StudyError(f"{resolved}: {key}: unknown key(s) {extra}; known: {sorted(allowed)}")
        cfg[key] = section
    for v in cfg["instruct"].get("variants", []):
        if v not in VARIANTS:
            raise StudyError(f"{resolved}: instruct.variants: unknown variant {v!r}; choose from {sorted(VARIANTS)}")
    cfg["_sizes"] = parse_sizes(cfg["sizes"], resolved)
    cfg["_path"] = str(resolved)
    return cfg


def parse_sizes(sizes: Any, where: Path) -> list[Size]:
    if not isinstance(sizes, dict) or not sizes:
        raise StudyError(f"{where}: sizes must be a non-empty mapping name -> {{preset, overrides}}")
    from .config import ModelConfig

    out = []
    for name, spec in sizes.items():
        spec = spec or {}
        extra = sorted(set(spec) - {"preset", "overrides"})
        if extra:
            raise StudyError(f"{where}: sizes.{name}: unknown key(s) {extra}; known: ['overrides', 'preset']")
        size = Size(str(name), str(spec.get("preset", "tiny")), dict(spec.get("overrides") or {}))
        for fam in ("redllm", "decllm"):
            try:
                ModelConfig.from_name(size.preset_for(fam), **size.overrides)
            except ValueError as err:
                raise StudyError(f"{where}: sizes.{name}: {err}") from None
        out.append(size)
    return out


def _args_list(args: Any) -> list[str]:
    """``{trainer.max_steps: 250, ...}`` or a list of CLI words -> CLI words."""
    if not args:
        return []
    if isinstance(args, list):
        return [str(a) for a in args]
    out = []
    for k, v in args.items():
        out += [f"--{k}", _cli_value(v)]
    return out


def _cli_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return "null" if v is None else str(v)


# ------------------------------------------------------------------------------------------------
# stage bookkeeping


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=_json_default)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


class Study:
    """Runs the stages of one study config in order, skipping those already marked done."""

    def __init__(self, cfg: dict, *, python: str = sys.executable, log: Callable[[str], None] = print,
                 fail_after: Optional[str] = None):
        self.cfg = cfg
        self.out = Path(cfg["out_dir"])
        self.runs = Path(cfg["runs_dir"])
        self.marks = self.out / ".study"
        self.python = python
        self._log = log
        self.fail_after = fail_after or os.environ.get("LIGHTNING_REDLLM_STUDY_KILL_AFTER")
        self.sizes: list[Size] = cfg["_sizes"]
        self.families: list[str] = list(cfg["families"])
        self.start = time.monotonic()
        self.stages: list[tuple[str, Callable[[], Any]]] = self._plan()

    # -- plan ----------------------------------------------------------------------------------
    def _plan(self) -> list[tuple[str, Callable[[], Any]]]:
        st: list[tuple[str, Callable[[], Any]]] = []
        for size in self.sizes:
            for fam in self.families:
                st.append((f"pretrain/{fam}-{size.name}", lambda f=fam, s=size: self.pretrain(f, s)))
        ins = self.cfg["instruct"]
        if ins.get("enabled", True) and ins.get("variants"):
            st.append(("instruct/data", self.instruct_data))
            for size in self.sizes:
                for v in ins["variants"]:
                    if VARIANTS[v][0] in self.families:
                        st.append((f"instruct/{v}-{size.name}", lambda v=v, s=size: self.instruct(v, s)))
        ev = self.cfg["evaluate"]
        for name in ("perplexity", "extrapolation", "efficiency", "instruct", "lm_eval"):
            if ev.get(name) is not None and not (name == "instruct" and not self._instruct_runs()):
                st.append((f"eval/{name}", getattr(self, f"eval_{name}")))
        if ev.get("perplexity") is not None:
            st.append(("eval/quality_flops", self.eval_quality_flops))
            if ev.get("scaling") is not None:
                st.append(("scaling", self.scaling))
        st.append(("report", self.report))
        return st

    def _instruct_runs(self) -> list[tuple[str, Size]]:
        ins = self.cfg["instruct"]
        if not ins.get("enabled", True):
            return []
        return [(v, s) for s in self.sizes for v in ins.get("variants", []) if VARIANTS[v][0] in self.families]

    # -- running -------------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        el = int(time.monotonic() - self.start)
        self._log(f"[study {el // 60:d}:{el % 60:02d}] {msg}")

    def marker(self, stage: str) -> Path:
        return self.marks / (stage.replace("/", "__") + ".json")

    def done(self, stage: str) -> Optional[dict]:
        m = self.marker(stage)
        if not m.exists():
            return None
        try:
            return json.loads(m.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # a torn marker cannot exist (atomic rename), but a hand-edited one may: redo

    def redo(self, prefixes: Sequence[str]) -> None:
        for stage, _ in self.stages:
            if any(stage.startswith(p) for p in prefixes) and self.marker(stage).exists():
                self.marker(stage).unlink()
                self.log(f"{stage}: marker removed, will run again")

    def run(self, only: Optional[Sequence[str]] = None) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        self.runs.mkdir(parents=True, exist_ok=True)
        n = len(self.stages)
        self.log(f"{self.cfg['name']}: {n} stages, results in {self.out}, runs in {self.runs}")
        for i, (stage, fn) in enumerate(self.stages, 1):
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
            _write_json_atomic(self.marker(stage), {"stage": stage, "seconds": secs, "finished": time.time(),
                                                    "summary": summary or ""})
            self.log(f"{i}/{n} {stage}: done in {secs:.0f} s{f' ({summary})' if summary else ''}")
            if self.fail_after and stage == self.fail_after:
                # test hook: die the way a kill does, right after a stage was recorded
                os.kill(os.getpid(), 9)
        self.log(f"all {n} stages done in {time.monotonic() - self.start:.0f} s; report: {self.out / 'report.md'}")
        return 0

    # -- training ------------------------------------------------------------------------------
    def run_dir(self, kind: str, name: str) -> Path:
        return self.runs / kind / name

    def _fit(self, root: Path, configs: Sequence[str], extra: Sequence[str]) -> None:
        args = ["fit"]
        for c in configs:
            args += ["--config", c]
        args += list(extra) + ["--trainer.default_root_dir", str(root)]
        if (root / "checkpoints" / "last.ckpt").exists():
            args += ["--ckpt_path", "last"]  # a run killed mid-way continues exactly where it stopped
            self.log(f"  resuming {root} from its last.ckpt")
        root.mkdir(parents=True, exist_ok=True)
        (root / "command.txt").write_text(shlex.join([self.python, "-m", "lightning_redllm", *args]) + "\n")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(root / "fit.log", "a") as logf:
            r = subprocess.run([self.python, "-m", "lightning_redllm", *args], stdout=logf, stderr=subprocess.STDOUT,
                               env=env)
        if r.returncode != 0:
            tail = (root / "fit.log").read_text().strip().splitlines()[-5:]
            raise StudyError(f"fit into {root} failed (exit {r.returncode}); see {root / 'fit.log'}:\n  " + "\n  ".join(tail))
        self._check_final_checkpoint(root, args)

    @staticmethod
    def _check_final_checkpoint(root: Path, args: Sequence[str]) -> None:
        """Everything downstream reads ``last.ckpt``: it must hold the final step, not the last periodic save
        (a recipe's ``ModelCheckpoint(every_n_train_steps=N)`` does not save at the end of training)."""
        from .reliability import load_torch_file

        ckpt = root / "checkpoints" / "last.ckpt"
        if not ckpt.exists():
            raise StudyError(f"fit into {root} wrote no checkpoints/last.ckpt")
        if "--trainer.max_steps" in args:
            want = int(args[len(args) - 1 - args[::-1].index("--trainer.max_steps") + 1])
            got = int(load_torch_file(ckpt, mmap=True).get("global_step", -1))
            if got != want:
                raise StudyError(f"{ckpt} holds step {got}, not the final step {want}: the checkpoint callback saves "
                                 f"every N steps and not at the end; make trainer.max_steps a multiple of N")

    def _model_args(self, fam: str, size: Size, extra_overrides: Optional[dict] = None, stage: Optional[dict] = None) -> list[str]:
        overrides = dict(size.overrides)
        overrides.update((stage or {}).get("model_overrides") or {})
        overrides.update(extra_overrides or {})
        args = ["--config", f"model/{size.preset_for(fam)}"]
        if overrides:
            args += ["--model.init_args.overrides", json.dumps(overrides)]
        return args

    def pretrain_args(self, fam: str, size: Size) -> tuple[Path, list[str], list[str]]:
        """(run folder, recipes, extra CLI words) of one pretraining run."""
        st = self.cfg["pretrain"]
        # the model recipe goes after the stage recipes (it sets the class); overrides after it
        return (self.run_dir("pretrain", f"{fam}-{size.name}"), list(st.get("configs") or []),
                [*self._model_args(fam, size, stage=st), *_args_list(st.get("args"))])

    def pretrain(self, fam: str, size: Size) -> str:
        root, configs, extra = self.pretrain_args(fam, size)
        self._fit(root, configs, extra)
        from .eval.scaling import last_metric

        loss = last_metric(root, "val/loss")
        return f"val/loss {loss:.3f}" if loss is not None else "no val/loss logged"

    def instruct_data(self) -> str:
        """Instruction shards without the held-out tasks (train and validation), from the FLAN-format jsonl."""
        from data_pipelines.flan import convert_flan

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

    def instruct_args(self, variant: str, size: Size) -> tuple[Path, list[str], list[str]]:
        """(run folder, recipes, extra CLI words) of one instruction-tuning run."""
        fam, biattn = VARIANTS[variant]
        ins = self.cfg["instruct"]
        init = self.run_dir("pretrain", f"{fam}-{size.name}") / "checkpoints" / "last.ckpt"
        data = self.runs / "data"
        extra = [*self._model_args(fam, size, stage=ins), "--model.init_args.init_from", str(init),
                 "--data.init_args.train_shards", str(data / "instruct-train"),
                 "--data.init_args.val_shards", str(data / "instruct-val")]
        if biattn:
            extra += ["--model.init_args.bidirectional_prefix", "true"]
        return self.run_dir("instruct", f"{variant}-{size.name}"), list(ins.get("configs") or []), \
            [*extra, *_args_list(ins.get("args"))]

    def instruct(self, variant: str, size: Size) -> str:
        root, configs, extra = self.instruct_args(variant, size)
        init = Path(extra[extra.index("--model.init_args.init_from") + 1])
        if not init.exists():
            raise StudyError(f"instruct {variant}-{size.name}: pretrained checkpoint {init} is missing")
        self._fit(root, configs, extra)
        from .eval.scaling import last_metric

        loss = last_metric(root, "val/loss")
        return f"val/loss {loss:.3f}" if loss is not None else "no val/loss logged"

    # -- evaluation helpers --------------------------------------------------------------------
    def pretrained(self) -> list[tuple[str, str, Size, Path]]:
        """(label, family, size, checkpoint) of every pretraining run."""
        return [(f"{fam}-{s.name}", fam, s, self.run_dir("pretrain", f"{fam}-{s.name}") / "checkpoints" / "last.ckpt")
                for s in self.sizes for fam in self.families]

    def tuned(self) -> list[tuple[str, str, Size, Path]]:
        return [(f"{v}-{s.name}", v, s, self.run_dir("instruct", f"{v}-{s.name}") / "checkpoints" / "last.ckpt")
                for v, s in self._instruct_runs()]

    def load(self, ckpt: Path):
        from .inference import load_for_inference

        if not ckpt.exists():
            raise StudyError(f"checkpoint {ckpt} is missing (did its training stage finish?)")
        return load_for_inference(ckpt, device=self.cfg.get("device", "cpu"))

    def train_length(self) -> int:
        from .eval.extrapolation import checkpoint_seq_len

        return checkpoint_seq_len(self.pretrained()[0][3]) or 2048

    def results(self, name: str) -> dict:
        return json.loads((self.out / name).read_text())

    # -- evaluation stages ---------------------------------------------------------------------
    def eval_perplexity(self) -> str:
        """Per-source held-out loss with each family's own objective, and the same tokens for both
        (second half of each training-length sequence given the first half)."""
        from .data.shards import bundled_shards
        from .eval.perplexity import evaluate_perplexity, score_continuations
        from .eval.perplexity import documents_by_source, pack_source
        from .eval.scaling import last_metric

        ev = self.cfg["evaluate"]["perplexity"] or {}
        shards = ev.get("shards") or bundled_shards("pretrain", "val")
        length = int(ev.get("length") or self.train_length())
        max_seq = int(ev.get("max_sequences", 32))
        out: dict = {"kind": "lightning_redllm.study_perplexity/1", "length": length, "prefix_len": length // 2,
                     "shards": str(shards), "models": {}}
        docs = None
        for label, fam, size, ckpt in self.pretrained():
            model, tok, cfg = self.load(ckpt)
            own = evaluate_perplexity(model, shards, bos_id=tok.bos_id, lengths=[length], batch_size=8,
                                      max_sequences=max_seq, tokenizer_fingerprint=tok.fingerprint)
            docs = docs or documents_by_source(shards, tok.fingerprint)
            matched, tot = {}, [0.0, 0]
            for src in sorted(docs):
                seqs = pack_source(docs[src], length, max_seq)
                if seqs is None:
                    continue
                nll, n, _ = score_continuations(model, seqs, length // 2, tok.bos_id, 8)
                matched[src] = nll / n
                tot = [tot[0] + nll, tot[1] + n]
            matched["all"] = tot[0] / tot[1]
            from .config import num_parameters

            out["models"][label] = {"family": fam, "size": size.name, "parameters": num_parameters(cfg),
                                    "config": cfg.to_dict(), "own_objective": own["lengths"][length],
                                    "matched_loss": matched, "val_loss_training": last_metric(ckpt.parent.parent, "val/loss")}
            self.log(f"  {label}: matched held-out loss {matched['all']:.3f} (ppl {math.exp(matched['all']):.1f})")
        _write_json_atomic(self.out / "perplexity.json", out)
        best = min(out["models"].items(), key=lambda kv: kv[1]["matched_loss"]["all"])
        return f"best matched loss {best[1]['matched_loss']['all']:.3f} ({best[0]})"

    def eval_extrapolation(self) -> str:
        from .data.shards import bundled_shards
        from .eval.extrapolation import default_lengths, extrapolation_sweep, format_extrapolation

        ev = self.cfg["evaluate"]["extrapolation"] or {}
        sizes = set(ev.get("sizes") or [s.name for s in self.sizes])
        train_len = self.train_length()
        lengths = ev.get("lengths") or default_lengths(train_len, factor=int(ev.get("factor", 8)))
        models, tok = {}, None
        for label, fam, size, ckpt in self.pretrained():
            if size.name in sizes:
                models[label], tok, _ = self.load(ckpt)
        res = extrapolation_sweep(models, ev.get("shards") or bundled_shards("pretrain", "val"), bos_id=tok.bos_id,
                                  lengths=lengths, prefix_lengths=ev.get("prefix_lengths") or [1, "half"],
                                  tokens_per_source=int(ev.get("tokens_per_source") or 2 * max(lengths)),
                                  batch_size=int(ev.get("batch_size", 4)), train_length=train_len,
                                  tokenizer_fingerprint=tok.fingerprint, log=self.log)
        _write_json_atomic(self.out / "extrapolation.json", res)
        self._plot("extrapolation", res)
        (self.out / "extrapolation.md").write_text(format_extrapolation(res))
        return f"{len(models)} models x {len(res['prefix_lengths'])} prefixes x {len(res['lengths'])} lengths"

    def eval_efficiency(self) -> str:
        from .eval.efficiency import efficiency_benchmark

        ev = dict(self.cfg["evaluate"]["efficiency"] or {})
        entries = ev.pop("presets", None) or [{"name": s.name, "preset": s.preset, "overrides": s.overrides}
                                              for s in self.sizes]
        entries = [{"name": s.name, "preset": s.preset, "overrides": s.overrides} if e == "study" else e
                   for e in entries for s in (self.sizes if e == "study" else [None])]
        res = efficiency_benchmark(entries, batch_sizes=ev.get("batch_sizes", [1, 4, 16]),
                                   prompt_len=int(ev.get("prompt_len", 128)), new_tokens=int(ev.get("new_tokens", 32)),
                                   repeats=int(ev.get("repeats", 3)), device=self.cfg.get("device", "cpu"),
                                   dtype=ev.get("dtype", "float32"), compile=bool(ev.get("compile", False)),
                                   log=self.log)
        _write_json_atomic(self.out / "efficiency.json", res)
        self._plot("efficiency", res)
        return f"{len(res['models'])} models"

    def eval_instruct(self) -> str:
        """Per-task target loss (seen tasks: validation split; held-out tasks: every example of
        both splits, never trained on) and the held-out multiple-choice task's accuracy."""
        ins = self.cfg["instruct"]
        ev = self.cfg["evaluate"]["instruct"] or {}
        held = set(ins.get("held_out_tasks") or [])
        max_ex = int(ev.get("max_examples", 60))
        rows_val = read_flan("val", ins.get("corpus"))
        rows_train = read_flan("train", ins.get("corpus"))
        tasks: dict[str, list[dict]] = {}
        for r in rows_val + [r for r in rows_train if r["task_name"] in held]:
            tasks.setdefault(r["task_name"], []).append(r)
        tasks = {t: rs[:max_ex] for t, rs in sorted(tasks.items())}
        out: dict = {"kind": "lightning_redllm.study_instruct/1", "held_out_tasks": sorted(held), "models": {}}
        for label, variant, size, ckpt in self.tuned():
            model, tok, cfg = self.load(ckpt)
            entry = {"variant": variant, "size": size.name, "config": cfg.to_dict(), "tasks": {}}
            for task, rows in tasks.items():
                ids = [(tok.encode(r["inputs"])[:256], tok.encode(r["targets"])[:127] + [tok.eos_id]) for r in rows]
                nll = score_pairs(model, tok, ids)
                entry["tasks"][task] = {"examples": len(rows), "held_out": task in held,
                                        "loss": sum(a for a, _ in nll) / sum(n for _, n in nll)}
                mc = [r for r in rows if "OPTIONS:" in r["inputs"]]
                if mc:
                    entry["tasks"][task]["mc_accuracy"] = option_accuracy(model, tok, mc)
                    entry["tasks"][task]["mc_chance"] = sum(1 / len(options_of(r["inputs"])) for r in mc) / len(mc)
            seen = [v["loss"] for v in entry["tasks"].values() if not v["held_out"]]
            unseen = [v["loss"] for v in entry["tasks"].values() if v["held_out"]]
            entry["seen_loss"] = sum(seen) / len(seen) if seen else None
            entry["held_out_loss"] = sum(unseen) / len(unseen) if unseen else None
            out["models"][label] = entry
            self.log(f"  {label}: seen-task loss {entry['seen_loss']:.3f}, held-out-task loss "
                     f"{entry['held_out_loss'] if entry['held_out_loss'] is None else round(entry['held_out_loss'], 3)}")
        _write_json_atomic(self.out / "instruct_eval.json", out)
        return f"{len(out['models'])} tuned models, {len(tasks)} tasks"

    def eval_lm_eval(self) -> str:
        ev = self.cfg["evaluate"]["lm_eval"] or {}
        try:
            import lm_eval  # noqa: F401
        except ImportError:
            self.log("  eval/lm_eval skipped: lm_eval is not installed (pip install 'lightning_redllm[eval]')")
            _write_json_atomic(self.out / "lm_eval.json", {"kind": "lightning_redllm.study_lm_eval/1",
                                                            "skipped": "lm_eval is not installed"})
            return "skipped: lm_eval not installed"
        from .eval.lm_eval_adapter import BUNDLED_TASKS, run_lm_eval

        tasks = list(ev.get("tasks") or BUNDLED_TASKS)
        which = ev.get("models", "all")
        # labels: pretrain/<family>-<size>, instruct/<variant>-<size> (a pretrained and a tuned RedLLM share a name)
        models = [(f"{kind}/{m[0]}", *m[1:]) for kind, ms in (("pretrain", self.pretrained()), ("instruct", self.tuned()))
                  for m in ms if which == "all" or m[0] in which or m[2].name in which]
        out: dict = {"kind": "lightning_redllm.study_lm_eval/1", "tasks": tasks, "limit": ev.get("limit"), "models": {}}
        for label, fam, size, ckpt in models:
            out["models"][label] = {"family": fam, "size": size.name, "shots": {}}
            for shots in ev.get("num_fewshot", [0]):
                t0 = time.monotonic()
                res = run_lm_eval(str(ckpt), tasks, int(shots), limit=ev.get("limit"),
                                  batch_size=int(ev.get("batch_size", 8)), device=self.cfg.get("device", "cpu"))
                out["models"][label]["shots"][str(shots)] = res.get("results", {})
                self.log(f"  {label} {shots}-shot: {_short_results(res.get('results', {}))} "
                         f"({time.monotonic() - t0:.0f} s)")
        _write_json_atomic(self.out / "lm_eval.json", out)
        return f"{len(out['models'])} models x {len(tasks)} tasks"

    def eval_quality_flops(self) -> str:
        """Quality vs analytic inference FLOPs per example (prompt + generation of a fixed size)."""
        from .eval.efficiency import quality_points

        ev = self.cfg["evaluate"].get("quality_flops") or {}
        p_len, n_new = int(ev.get("prompt_len", 256)), int(ev.get("new_tokens", 64))
        ppl = self.results("perplexity.json")
        pts = quality_points([{"label": k, "config": m["config"], "value": math.exp(m["matched_loss"]["all"])}
                              for k, m in ppl["models"].items()], p_len, n_new)
        res = {"kind": "lightning_redllm.quality_flops/1", "prompt_len": p_len, "new_tokens": n_new,
               "pretrained": pts, "pretrained_metric": "held-out perplexity, same tokens for both families"}
        if (self.out / "instruct_eval.json").exists():
            ins = self.results("instruct_eval.json")
            res["instruct"] = quality_points([{"label": k, "config": m["config"], "value": math.exp(m["held_out_loss"])}
                                              for k, m in ins["models"].items() if m.get("held_out_loss") is not None],
                                             p_len, n_new)
            res["instruct_metric"] = "held-out-task target perplexity (tasks never trained on)"
        _write_json_atomic(self.out / "quality_flops.json", res)
        self._plot("quality_flops", res)
        return f"{len(pts)} pretrained points"

    def scaling(self) -> str:
        from .eval.scaling import format_scaling, run_point, scaling_fits

        ev = self.cfg["evaluate"].get("scaling") or {}
        ppl = self.results("perplexity.json")
        points = []
        for label, fam, size, ckpt in self.pretrained():
            pt = run_point(ckpt)
            pt.update({"label": label, "size": size.name, "val_loss_training": pt["loss"],
                       "loss": ppl["models"][label]["matched_loss"]["all"]})
            points.append(pt)
        res = scaling_fits(points, float(ev.get("confidence", 0.95)),
                           loss_name="held-out loss (2nd half given 1st, both families)")
        _write_json_atomic(self.out / "scaling.json", res)
        self._plot("scaling", res)
        (self.out / "scaling.md").write_text(format_scaling(res))
        parts = [f"{f}: b={e['flops']['b']:.3f}" for f, e in res["families"].items() if e.get("flops")]
        return ", ".join(parts) or "no fit"

    def _plot(self, what: str, res: dict) -> None:
        from .eval import plots

        try:
            if what == "extrapolation":
                plots.plot_extrapolation(res, self.out)
            elif what == "efficiency":
                plots.plot_efficiency(res, self.out)
            elif what == "scaling":
                plots.plot_scaling(res, self.out)
            elif what == "quality_flops":
                w = f"prompt {res['prompt_len']} + {res['new_tokens']} new tokens"
                plots.plot_quality_vs_flops(res["pretrained"], self.out, ylabel="held-out perplexity",
                                            name="quality_vs_flops_pretrained",
                                            title=f"pretrained: quality vs inference FLOPs ({w})")
                if res.get("instruct"):
                    plots.plot_quality_vs_flops(res["instruct"], self.out, ylabel="held-out-task perplexity",
                                                name="quality_vs_flops_instruct",
                                                title=f"instruction-tuned, unseen tasks ({w})")
        except ImportError as err:
            self.log(f"  no {what} plot: {err}")

    def report(self) -> str:
        from .report import write_report

        curves = {}
        from .report import run_curves

        for label, _, _, ckpt in self.pretrained():
            curves[f"pretrain/{label}"] = run_curves(ckpt.parent.parent)
        for label, _, _, ckpt in self.tuned():
            curves[f"instruct/{label}"] = run_curves(ckpt.parent.parent)
        _write_json_atomic(self.out / "curves.json", {"kind": "lightning_redllm.curves/1", "runs": curves})
        from .eval import plots

        try:
            plots.plot_curves({k.split("/", 1)[1]: v.get("val/loss", {}) for k, v in curves.items()
                               if k.startswith("pretrain/")}, self.out, name="curves_pretrain",
                              ylabel="val/loss (own objective)", title="pretraining validation loss")
            if any(k.startswith("instruct/") for k in curves):
                plots.plot_curves({k.split("/", 1)[1]: v.get("val/loss", {}) for k, v in curves.items()
                                   if k.startswith("instruct/")}, self.out, name="curves_instruct",
                                  ylabel="val/loss (seen tasks)", title="instruction tuning validation loss")
        except ImportError as err:
            self.log(f"  no curve plots: {err}")
        markers = {s: self.done(s) for s, _ in self.stages if s != "report"}
        info = {"kind": "lightning_redllm.study/1", "name": self.cfg["name"], "description": self.cfg.get("description", ""), "config": self.cfg["_path"],
                "stages": {s: (m or {}).get("seconds") for s, m in markers.items()},
                "wall_seconds": sum((m or {}).get("seconds") or 0 for m in markers.values()),
                "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": _cpu_name()}
        _write_json_atomic(self.out / "study.json", info)
        path = write_report(self.out, title=f"Study `{self.cfg['name']}`")
        return str(path)


# ------------------------------------------------------------------------------------------------
# instruction data and scoring


def read_flan(split: str, corpus: Optional[dict] = None) -> list[dict]:
    """The FLAN-format jsonl(.zst) of a split (default: the bundled set)."""
    import zstandard

    path = Path((corpus or {}).get(split) or _bundled_flan(split))
    raw = path.read_bytes()
    if path.suffix == ".zst":
        raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
    return [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]


def _bundled_flan(split: str) -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files("lightning_redllm.assets"))) / "corpus" / "flan" / f"{split}.jsonl.zst"


@torch.no_grad()
def score_pairs(model, tok, pairs: Sequence[tuple[list[int], list[int]]], batch_size: int = 16) -> list[tuple[float, int]]:
    """(summed target NLL, target tokens) per (input ids, target ids incl. eos), scored the way
    each family is instruction-tuned (``objectives.instruct_*``)."""
    from .data.instruct import InstructCollator
    from .data.objectives import instruct_decoder_only, instruct_encoder_decoder
    from .models import RedLLM

    device = model.embed.weight.device
    coll = InstructCollator(tok.pad_id, 8)
    out = []
    model.eval()
    for start in range(0, len(pairs), batch_size):
        items = [{"inputs": torch.tensor(i or [tok.pad_id]), "targets": torch.tensor(t)} for i, t in pairs[start:start + batch_size]]
        b = {k: v.to(device) for k, v in coll(items).items()}
        if isinstance(model, RedLLM):
            x = instruct_encoder_decoder(b["inputs"], b["input_lengths"], b["targets"], b["target_lengths"], tok.bos_id, tok.pad_id)
            logits = model(x["encoder_input_ids"], x["decoder_input_ids"], encoder_lengths=x["encoder_lengths"],
                           return_logits=True).logits
        else:
            x = instruct_decoder_only(b["inputs"], b["input_lengths"], b["targets"], b["target_lengths"], tok.bos_id,
                                      tok.pad_id, pad_to_multiple=8, bidirectional_prefix=model.config.bidirectional_prefix)
            logits = model(x["input_ids"], prefix_lengths=x.get("prefix_lengths"), return_logits=True).logits
        labels = x["labels"]
        nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100,
                                                reduction="none")  # (B, T)
        valid = labels != -100
        out += [(float(nll[i][valid[i]].sum()), int(valid[i].sum())) for i in range(labels.shape[0])]
    return out


def options_of(inputs: str) -> list[str]:
    tail = inputs.split("OPTIONS:", 1)[1]
    return [ln[2:].strip() for ln in tail.splitlines() if ln.startswith("- ")]


def option_accuracy(model, tok, rows: Sequence[dict]) -> float:
    """Zero-shot multiple choice: the option whose tokens (+ eos) get the lowest summed NLL."""
    correct = 0
    for r in rows:
        opts = options_of(r["inputs"])
        inp = tok.encode(r["inputs"])[:256]
        scores = score_pairs(model, tok, [(inp, tok.encode(o) + [tok.eos_id]) for o in opts])
        pick = min(range(len(opts)), key=lambda i: scores[i][0])
        correct += int(opts[pick].strip() == r["targets"].strip())
    return correct / len(rows)


def _short_results(results: dict) -> str:
    parts = []
    for task, metrics in results.items():
        nums = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float)) and "stderr" not in k]
        if nums:
            k, v = nums[0]
            parts.append(f"{task} {k.split(',')[0]}={v:.3f}")
    return ", ".join(parts) or "no results"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f", {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"


# ------------------------------------------------------------------------------------------------
# command line


def study_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m lightning_redllm study",
                                description="Run a RedLLM-vs-DecLLM study end to end (train, instruction-tune, evaluate, "
                                            "fit scaling laws, write report.md); resumes where it stopped.")
    p.add_argument("--config", required=True, help="study YAML, e.g. recipes/study/cpu-mini.yaml (or study/cpu-mini)")
    p.add_argument("--out_dir", default=None, help="override the config's out_dir")
    p.add_argument("--runs_dir", default=None, help="override the config's runs_dir (checkpoints, logs)")
    p.add_argument("--only", action="append", default=None, metavar="STAGE", help="run only stages starting with this")
    p.add_argument("--redo", action="append", default=[], metavar="STAGE", help="forget stages starting with this, then run")
    p.add_argument("--dry_run", action="store_true", help="list the stages and whether each is done; run nothing")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads per process (torch and OMP_NUM_THREADS of every fit); 1 avoids oversubscribing "
                        "cores shared with other jobs (default: torch's choice)")
    a = p.parse_args(list(argv))
    if a.threads is not None:
        if a.threads < 1:
            p.error(f"--threads must be >= 1, got {a.threads}")
        os.environ["OMP_NUM_THREADS"] = str(a.threads)  # inherited by every fit subprocess
        torch.set_num_threads(a.threads)
    cfg = load_study_config(a.config)
    if a.out_dir:
        cfg["out_dir"] = a.out_dir
        if not a.runs_dir and "runs_dir" in cfg:
            cfg["runs_dir"] = str(Path(a.out_dir) / "runs")
    if a.runs_dir:
        cfg["runs_dir"] = a.runs_dir
    study = Study(cfg, log=lambda m: print(m, flush=True))
    if a.dry_run:
        for i, (stage, _) in enumerate(study.stages, 1):
            print(f"{i:3d} {stage:<32} {'done' if study.done(stage) else 'to do'}")
        return 0
    if a.redo:
        study.redo(a.redo)
    return study.run(a.only)
