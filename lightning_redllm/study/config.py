"""The study file: a YAML mapping (not a Lightning config) read and checked into a plain dict.

``recipes/study/cpu-mini.yaml`` shows the basic keys, ``recipes/study/cpu-study.yaml`` the seeds, the
token budget, the learning-rate rule and the ablations. Loading fills the defaults (``families``,
``runs_dir``, ``device``), checks every section's keys against the lists below (an unknown key is an
error that names the file and the key) and adds derived entries: ``_sizes`` (the checked
:class:`Size` list), ``_path`` (the resolved file) and, when ``pretrain.tokens_per_parameter`` is set,
``_recipe`` (tokens per optimizer step and the checkpoint interval, read from the pretraining recipes
and args: what turns a token budget into ``trainer.max_steps``; see :func:`recipe_facts`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

KNOWN_KEYS = {"name", "description", "out_dir", "runs_dir", "families", "sizes", "pretrain", "instruct", "evaluate",
              "device", "seed", "seeds", "ablations"}
STAGE_KEYS = {"configs", "args", "model_overrides"}
#: ``tokens_per_parameter``: training tokens = that x non-embedding parameters (per size, see plan.size_budgets);
#: ``lr_rule``: ``{base_lr, base_width, exponent}``, lr = base_lr * (base_width / d_model) ** exponent
PRETRAIN_KEYS = STAGE_KEYS | {"tokens_per_parameter", "lr_rule"}
LR_RULE_KEYS = {"base_lr", "base_width", "exponent"}
INSTRUCT_KEYS = STAGE_KEYS | {"variants", "held_out_tasks", "corpus", "tokenizer", "enabled", "sizes"}
EVAL_KEYS = {"perplexity", "extrapolation", "efficiency", "instruct", "lm_eval", "scaling", "quality_flops",
             "zero_shot", "ablations"}
#: instruction-tuning variant -> (family of its pretrained model, bidirectional prefix)
VARIANTS = {"redllm": ("redllm", False), "decllm": ("decllm", False), "decllm_biattn": ("decllm", True)}
#: ablation -> its arms: arm name -> (family, ModelConfig overrides); the first arm is the control
ABLATIONS = {"attn_out_norm": {"redllm_out_norm": ("redllm", {"attn_out_norm": True}),
                               "redllm_no_out_norm": ("redllm", {"attn_out_norm": False})}}
ABLATION_KEYS = {"size", "args"}


def resolve_recipe(value: str) -> str:
    """A study file or recipe found like a ``--config`` value (a file, or a packaged recipe by name)."""
    from ..assets.recipes import resolve_recipe as resolve

    return resolve(value)


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
    for key, allowed in (("pretrain", PRETRAIN_KEYS), ("instruct", INSTRUCT_KEYS), ("evaluate", EVAL_KEYS),
                         ("ablations", set(ABLATIONS))):
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
    cfg["seeds"] = _check_seeds(cfg.get("seeds"), resolved)
    names = [s.name for s in cfg["_sizes"]]
    if cfg["instruct"].get("sizes") is not None:
        tuned = [str(s) for s in cfg["instruct"]["sizes"]] if isinstance(cfg["instruct"]["sizes"], list) else None
        bad = [s for s in tuned or [] if s not in names]
        if tuned is None or bad:
            raise StudyError(f"{resolved}: instruct.sizes: unknown size(s) {bad or cfg['instruct']['sizes']!r}; "
                             f"the study's sizes: {names}")
        cfg["instruct"]["sizes"] = tuned
    for name, spec in cfg["ablations"].items():
        spec = spec or {}
        if not isinstance(spec, dict):
            raise StudyError(f"{resolved}: ablations.{name} must be a mapping with keys {sorted(ABLATION_KEYS)}")
        extra = sorted(set(spec) - ABLATION_KEYS)
        if extra:
            raise StudyError(f"{resolved}: ablations.{name}: unknown key(s) {extra}; known: {sorted(ABLATION_KEYS)}")
        if str(spec.get("size", names[-1])) not in names:
            raise StudyError(f"{resolved}: ablations.{name}.size: unknown size {spec['size']!r}; the study's sizes: {names}")
        if "redllm" not in cfg["families"]:
            raise StudyError(f"{resolved}: ablations.{name} trains RedLLM, but families is {cfg['families']}")
        cfg["ablations"][name] = {"size": str(spec.get("size", names[-1])), "args": spec.get("args") or {}}
    _check_pretrain_budget(cfg, resolved)
    cfg["_path"] = str(resolved)
    return cfg


def _check_seeds(seeds: Any, where: Path) -> Optional[list[int]]:
    if seeds is None:
        return None
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise StudyError(f"{where}: seeds must be a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise StudyError(f"{where}: seeds has repeats: {seeds}")
    return list(seeds)


def _check_pretrain_budget(cfg: dict, where: Path) -> None:
    """``tokens_per_parameter`` / ``lr_rule`` / ``seeds`` own flags that ``pretrain.args`` must not also set;
    with a token budget, read what a step holds from the recipes (``_recipe``)."""
    st = cfg["pretrain"]
    given = args_dict(st.get("args"))
    owned = {"tokens_per_parameter": ("trainer.max_steps",), "lr_rule": ("model.init_args.lr", "model.lr"),
             "seeds": ("seed_everything", "data.init_args.seed", "data.seed")}
    for key, flags in owned.items():
        present = st.get(key) is not None if key != "seeds" else cfg.get("seeds") is not None
        clash = [f for f in flags if f in given]
        if present and clash:
            raise StudyError(f"{where}: pretrain.args sets {clash[0]}, which {key} decides per run; remove it")
    tpp = st.get("tokens_per_parameter")
    if tpp is not None:
        if isinstance(tpp, bool) or not isinstance(tpp, (int, float)) or not tpp > 0:
            raise StudyError(f"{where}: pretrain.tokens_per_parameter must be a number > 0, got {tpp!r}")
        cfg["_recipe"] = recipe_facts(list(st.get("configs") or []), given, where)
    rule = st.get("lr_rule")
    if rule is not None:
        if not isinstance(rule, dict):
            raise StudyError(f"{where}: pretrain.lr_rule must be a mapping with keys {sorted(LR_RULE_KEYS)}")
        extra = sorted(set(rule) - LR_RULE_KEYS)
        missing = sorted({"base_lr", "base_width"} - set(rule))
        if extra or missing:
            raise StudyError(f"{where}: pretrain.lr_rule: " + (f"unknown key(s) {extra}" if extra else
                                                                f"missing key(s) {missing}")
                             + f"; known: {sorted(LR_RULE_KEYS)}")
        for key in ("base_lr", "base_width", "exponent"):
            v = rule.get(key, 1.0)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 or (key == "exponent" and v == 0)):
                raise StudyError(f"{where}: pretrain.lr_rule.{key} must be a number > 0, got {v!r}")


def args_dict(args: Any) -> dict[str, Any]:
    """A stage's ``args`` (mapping, or CLI words ``[--k, v, --k2=v2]``) as {dotted key: value}."""
    if not args:
        return {}
    if isinstance(args, dict):
        return {str(k): v for k, v in args.items()}
    words, out, i = [str(a) for a in args], {}, 0
    while i < len(words):
        w = words[i]
        if w.startswith("--") and "=" in w:
            k, v = w[2:].split("=", 1)
            out[k] = v
        elif w.startswith("--") and i + 1 < len(words) and not words[i + 1].startswith("--"):
            out[w[2:]] = words[i + 1]
            i += 1
        elif w.startswith("--"):
            out[w[2:]] = True
        i += 1
    return out


def recipe_facts(configs: list[str], args: dict, where: Path) -> dict:
    """Tokens per optimizer step and the checkpoint interval of a stage's runs: its recipes merged in
    order (later keys win, lists are replaced, as LightningCLI does), then its dotted ``args``.

    tokens per step = data batch_size x seq_len x trainer.accumulate_grad_batches x devices x num_nodes;
    the checkpoint interval is the ``every_n_train_steps`` of the recipe's checkpoint callback (1 when
    there is none).
    """
    import yaml

    merged: dict = {}
    for c in configs:
        path = Path(resolve_recipe(str(c)))
        data = yaml.safe_load(path.read_text()) if path.exists() else yaml.safe_load(str(c))
        _merge(merged, data if isinstance(data, dict) else {})

    def get(*keys: str, default: Any = None) -> Any:
        for key in keys:
            if key in args:
                return args[key]
        for key in keys:
            node: Any = merged
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if node is not None:
                return node
        return default

    facts = {}
    for name, keys, default in (("batch_size", ("data.init_args.batch_size", "data.batch_size"), None),
                                ("seq_len", ("data.init_args.seq_len", "data.seq_len"), None),
                                ("accumulate_grad_batches", ("trainer.accumulate_grad_batches",), 1),
                                ("devices", ("trainer.devices",), 1), ("num_nodes", ("trainer.num_nodes",), 1)):
        value = get(*keys, default=default)
        try:
            value = int(value)
        except (TypeError, ValueError):
            raise StudyError(f"{where}: pretrain.tokens_per_parameter needs an integer {keys[0]} in the pretraining "
                             f"recipes or args (to turn tokens into trainer.max_steps), got {value!r}") from None
        if value < 1:
            raise StudyError(f"{where}: {keys[0]} must be >= 1, got {value}")
        facts[name] = value
    every = 1
    for cb in get("trainer.callbacks", default=[]) or []:
        if isinstance(cb, dict) and str(cb.get("class_path", "")).endswith(("RunCheckpoint", "ModelCheckpoint")):
            every = int((cb.get("init_args") or {}).get("every_n_train_steps") or 1)
    facts["checkpoint_every"] = every
    facts["tokens_per_step"] = (facts["batch_size"] * facts["seq_len"] * facts["accumulate_grad_batches"]
                                * facts["devices"] * facts["num_nodes"])
    return facts


def _merge(into: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


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
