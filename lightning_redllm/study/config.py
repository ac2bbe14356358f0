"""The study file: a YAML mapping (not a Lightning config) read and checked into a plain dict.

``recipes/study/cpu-mini.yaml`` shows every key. Loading fills the defaults (``families``,
``runs_dir``, ``device``), checks every section's keys against the lists below (an unknown key is an
error that names the file and the key) and adds two derived entries: ``_sizes`` (the checked
:class:`Size` list) and ``_path`` (the resolved file).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KNOWN_KEYS = {"name", "description", "out_dir", "runs_dir", "families", "sizes", "pretrain", "instruct", "evaluate",
              "device", "seed"}
STAGE_KEYS = {"configs", "args", "model_overrides"}
INSTRUCT_KEYS = STAGE_KEYS | {"variants", "held_out_tasks", "corpus", "tokenizer", "enabled"}
EVAL_KEYS = {"perplexity", "extrapolation", "efficiency", "instruct", "lm_eval", "scaling", "quality_flops"}
#: instruction-tuning variant -> (family of its pretrained model, bidirectional prefix)
VARIANTS = {"redllm": ("redllm", False), "decllm": ("decllm", False), "decllm_biattn": ("decllm", True)}


class StudyError(ValueError):
    """A study configuration or stage error a user can act on."""


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

    from ..cli import resolve_recipe

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
    from ..config import ModelConfig

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


def args_list(args: Any) -> list[str]:
    """``{trainer.max_steps: 250, ...}`` or a list of CLI words -> CLI words."""
    if not args:
        return []
    if isinstance(args, list):
        return [str(a) for a in args]
    out = []
    for k, v in args.items():
        out += [f"--{k}", cli_value(v)]
    return out


def cli_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return "null" if v is None else str(v)
