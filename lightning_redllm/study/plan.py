"""The plan: the training runs of a study and its ordered list of stages, computed from the config alone.

Pure (no file is read or written), so ``study --dry_run`` and the tests can list a study without
running it. A stage's ``name`` is its marker's name and what ``--only`` / ``--redo`` prefixes match:

    pretrain/<family>-<size>[-seed<k>]        one ``fit`` per family, size (and seed)
    ablation/<arm>-<size>[-seed<k>]           the ablations' runs (arms of ``config.ABLATIONS``)
    instruct/data                             instruction shards without the held-out tasks
    instruct/<variant>-<size>[-seed<k>]       one ``fit`` per tuning variant and size (from its pretrained run)
    eval/<evaluation>                         perplexity, zero_shot, extrapolation, efficiency, instruct,
                                              lm_eval, ablations, quality_flops
    scaling                                   scaling-law fits
    report                                    findings.json, report.md

With ``seeds: [0, 1, 2]`` every run exists once per seed (the ``-seed<k>`` suffix; without ``seeds``
no suffix, one run each), and the two families of a pair share the seed: same initialization seed,
same data order, the same tokens scored.

The token budget and the learning rate of each size (:func:`size_budgets`):

    tokens(size)    = tokens_per_parameter x mean over the study's families of non_embedding_parameters
    max_steps(size) = ceil(tokens / tokens_per_step), rounded up to a multiple of the checkpoint interval
    lr(size)        = base_lr x (base_width / d_model) ** exponent

Both families of a size train the same number of steps on the same batches (the mean of their
non-embedding counts, which differ by RedLLM's cross-attention, sets it), so a pair stays paired.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional

from .config import ABLATIONS, VARIANTS, Size

#: the evaluations that run when their key is in the config's ``evaluate`` section, in this order
CONFIGURED_EVALUATIONS = ("perplexity", "zero_shot", "extrapolation", "efficiency", "instruct", "lm_eval")


class Run(NamedTuple):
    """One training run: ``label`` (``<name>-<size>[-seed<k>]``), ``name`` (family of a pretraining run,
    variant of an instruction-tuning run, arm of an ablation), its size, the checkpoint everything
    downstream reads and its seed (None: the recipe's)."""
    label: str
    name: str
    size: Size
    ckpt: Path
    seed: Optional[int] = None

    @property
    def root(self) -> Path:
        return self.ckpt.parent.parent

    @property
    def group(self) -> str:
        """``<name>-<size>``: the label without its seed (what a table row aggregates over seeds)."""
        return f"{self.name}-{self.size.name}"


@dataclass(frozen=True)
class Stage:
    name: str                         # marker name and --only/--redo match: "pretrain/redllm-s", "eval/perplexity"
    action: str                       # "pretrain" | "ablation" | "instruct_data" | "instruct" | "evaluate" | "report"
    run: Optional[Run] = None         # the training run of a pretrain/ablation/instruct stage
    evaluation: Optional[str] = None  # the evaluation of an "evaluate" stage


@dataclass(frozen=True)
class Budget:
    """The pretraining budget of one size: ``max_steps`` (None: the recipe's) and ``lr`` (None: the recipe's)."""
    size: str
    d_model: int
    non_embedding: dict          # family -> non-embedding parameters
    tokens: Optional[int]        # tokens_per_parameter x mean non-embedding parameters
    max_steps: Optional[int]
    lr: Optional[float]


def run_dir(cfg: dict, kind: str, name: str) -> Path:
    """``<runs_dir>/<kind>/<name>``: the folder of one training run (kind: pretrain, instruct, ablation)."""
    return Path(cfg["runs_dir"]) / kind / name


def seeds(cfg: dict) -> list[Optional[int]]:
    """The study's seeds; ``[None]`` (one run, the recipe's seed, no label suffix) without ``seeds``."""
    return list(cfg.get("seeds") or [None])


def run_label(name: str, size: Size, seed: Optional[int]) -> str:
    return f"{name}-{size.name}" + (f"-seed{seed}" if seed is not None else "")


def _run(cfg: dict, kind: str, name: str, size: Size, seed: Optional[int]) -> Run:
    label = run_label(name, size, seed)
    return Run(label, name, size, run_dir(cfg, kind, label) / "checkpoints" / "last.ckpt", seed)


def pretrain_runs(cfg: dict) -> list[Run]:
    """Every pretraining run: each size, each seed, each family (sizes outer, a pair adjacent)."""
    return [_run(cfg, "pretrain", fam, s, seed) for s in cfg["_sizes"] for seed in seeds(cfg)
            for fam in cfg["families"]]


def instruct_runs(cfg: dict) -> list[Run]:
    """Every instruction-tuning run: each size (``instruct.sizes``, default all), seed and variant whose family
    is pretrained (none when disabled)."""
    ins = cfg["instruct"]
    if not ins.get("enabled", True):
        return []
    tuned = ins.get("sizes")
    return [_run(cfg, "instruct", v, s, seed) for s in cfg["_sizes"] if tuned is None or s.name in tuned
            for seed in seeds(cfg) for v in ins.get("variants", []) if VARIANTS[v][0] in cfg["families"]]


def ablation_runs(cfg: dict) -> list[Run]:
    """Every ablation run: each configured ablation's arms at its size, once per seed (arms of a seed adjacent)."""
    sizes = {s.name: s for s in cfg["_sizes"]}
    return [_run(cfg, "ablation", arm, sizes[spec["size"]], seed)
            for name, spec in (cfg.get("ablations") or {}).items() for seed in seeds(cfg) for arm in ABLATIONS[name]]


def size_budgets(cfg: dict) -> dict[str, Budget]:
    """Steps and learning rate of every size (see the module docstring for the rules)."""
    from ..config import ModelConfig, non_embedding_parameters

    st = cfg["pretrain"]
    tpp, rule, facts = st.get("tokens_per_parameter"), st.get("lr_rule"), cfg.get("_recipe")
    out = {}
    for size in cfg["_sizes"]:
        overrides = {**size.overrides, **(st.get("model_overrides") or {})}
        mcfgs = {fam: ModelConfig.from_name(size.preset_for(fam), **overrides) for fam in cfg["families"]}
        n = {fam: non_embedding_parameters(c) for fam, c in mcfgs.items()}
        d_model = next(iter(mcfgs.values())).d_model
        tokens = steps = lr = None
        if tpp is not None:
            tokens = int(math.ceil(tpp * sum(n.values()) / len(n)))
            every = facts["checkpoint_every"]
            steps = every * math.ceil(math.ceil(tokens / facts["tokens_per_step"]) / every)
        if rule is not None:
            lr = lr_for_width(rule, d_model)
        out[size.name] = Budget(size.name, d_model, n, tokens, steps, lr)
    return out


def lr_for_width(rule: dict, width: int) -> float:
    """``base_lr * (base_width / width) ** exponent`` (exponent 1 by default), to 4 significant digits."""
    lr = float(rule["base_lr"]) * (float(rule["base_width"]) / width) ** float(rule.get("exponent", 1.0))
    return float(f"{lr:.4g}")


def plan_stages(cfg: dict) -> list[Stage]:
    """The stages of a study, in the order they run."""
    stages = [Stage(f"pretrain/{r.label}", "pretrain", run=r) for r in pretrain_runs(cfg)]
    stages += [Stage(f"ablation/{r.label}", "ablation", run=r) for r in ablation_runs(cfg)]
    ins, tuned = cfg["instruct"], instruct_runs(cfg)
    if ins.get("enabled", True) and ins.get("variants"):
        stages.append(Stage("instruct/data", "instruct_data"))
        stages += [Stage(f"instruct/{r.label}", "instruct", run=r) for r in tuned]
    ev = cfg["evaluate"]
    for name in CONFIGURED_EVALUATIONS:
        if ev.get(name) is not None and not (name == "instruct" and not tuned):
            stages.append(Stage(f"eval/{name}", "evaluate", evaluation=name))
    if ev.get("ablations") is not None or cfg.get("ablations"):
        stages.append(Stage("eval/ablations", "evaluate", evaluation="ablations"))
    if ev.get("perplexity") is not None:  # both read perplexity.json
        stages.append(Stage("eval/quality_flops", "evaluate", evaluation="quality_flops"))
        if ev.get("scaling") is not None:
            stages.append(Stage("scaling", "evaluate", evaluation="scaling"))
    stages.append(Stage("report", "report"))
    return stages


def format_plan(names: list[str], done: list[bool]) -> str:
    """The ``--dry_run`` listing: number, stage, done / to do."""
    width = max([32, *map(len, names)])
    return "\n".join(f"{i:3d} {stage:<{width}} {'done' if d else 'to do'}"
                     for i, (stage, d) in enumerate(zip(names, done), 1))


def format_budgets(cfg: dict) -> str:
    """The ``--dry_run`` budget table (only for a study with a token budget or a learning-rate rule)."""
    st = cfg["pretrain"]
    if st.get("tokens_per_parameter") is None and st.get("lr_rule") is None:
        return ""
    facts = cfg.get("_recipe") or {}
    lines = [f"budgets: tokens_per_parameter {st.get('tokens_per_parameter')}, lr_rule {st.get('lr_rule')}, "
             f"{facts.get('tokens_per_step', '-')} tokens/step, steps a multiple of {facts.get('checkpoint_every', '-')}",
             f"  {'size':<8}{'d_model':>8} {'non-embedding parameters':<36}{'tokens':>11}{'max_steps':>10}{'lr':>10}"]
    for b in size_budgets(cfg).values():
        n = ", ".join(f"{f} {v / 1e6:.3f}M" for f, v in b.non_embedding.items())
        lines.append(f"  {b.size:<8}{b.d_model:>8} {n:<36}{b.tokens if b.tokens else '-':>11}"
                     f"{b.max_steps or '-':>10}{b.lr if b.lr else '-':>10}")
    return "\n".join(lines)
