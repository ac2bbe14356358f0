"""``python -m lightning_redllm``: LightningCLI (fit/validate/test/predict) plus extra subcommands.

Recipes compose: ``--config`` may be given several times; later files and dotted overrides win.
The parser runs in jsonargparse's ``omegaconf+`` mode, so a recipe may interpolate values from
another recipe (relative form ``${..data.init_args.seq_len}`` or absolute under the subcommand).
``fit`` with no ``--config`` runs ``recipes/quickstart.yaml`` (tiny RedLLM on the bundled corpus).
"""
from __future__ import annotations

import importlib.resources
import sys
from pathlib import Path
from typing import Optional, Sequence

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI

from .modules import LanguageModelModule

#: the recipes shipped with the package (the repository's top-level ``recipes/``, mapped into the
#: wheel as ``lightning_redllm.recipes``; an editable install points at the repository folder)
RECIPES = Path(str(importlib.resources.files("lightning_redllm.recipes")))
QUICKSTART = RECIPES / "quickstart.yaml"
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
CONFIG_FLAGS = ("--config", "-c")


class RedLLMCLI(LightningCLI):
    """LightningCLI with the module/datamodule base classes of this package (subclass mode: any
    subclass is selected with ``--model.class_path`` / ``--data.class_path``)."""

    def __init__(self, args: Optional[Sequence[str]] = None, **kwargs):
        kwargs.setdefault("parser_kwargs", {"parser_mode": "omegaconf+"})
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)
        # crash-safe checkpoint writes (temp + fsync + rename) and weights_only loads by default;
        # `--trainer.plugins+=X` adds to it, `--trainer.plugins X` replaces it
        kwargs.setdefault("trainer_defaults", {"plugins": [{"class_path": "lightning_redllm.reliability.AtomicCheckpointIO"}]})
        super().__init__(LanguageModelModule, LightningDataModule, subclass_mode_model=True,
                         subclass_mode_data=True, args=args, **kwargs)


def list_recipes() -> list[str]:
    """Names of the packaged recipes (``stage/pretrain.yaml``, ...), sorted."""
    return sorted(p.relative_to(RECIPES).as_posix() for p in RECIPES.rglob("*.yaml"))


def resolve_recipe(value: str) -> str:
    """One ``--config`` value: a file that exists is used as given; otherwise a packaged recipe by
    its path (``recipes/stage/pretrain.yaml``, as the README writes it) or name (``stage/pretrain``),
    so recipe commands work from any directory and for a non-editable install."""
    if any(ch in value for ch in "{}\n:") or Path(value).exists():  # inline YAML, or a real file
        return value
    rel = value[len("recipes/"):] if value.startswith("recipes/") else value
    for candidate in (rel, f"{rel}.yaml"):
        if (RECIPES / candidate).is_file():
            return str(RECIPES / candidate)
    raise FileNotFoundError(
        f"config file not found: {value} (neither in {Path.cwd()} nor among the packaged recipes; "
        "list them with `python -m lightning_redllm recipes`)")


def resolve_config_args(args: list[str]) -> list[str]:
    """Resolve every ``--config X`` / ``--config=X`` / ``-c X`` value with :func:`resolve_recipe`."""
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if a in CONFIG_FLAGS and i + 1 < len(args):
            out += ["--config", resolve_recipe(args[i + 1])]
            i += 2
            continue
        if a.startswith("--config="):
            a = "--config=" + resolve_recipe(a[len("--config="):])
        out.append(a)
        i += 1
    return out


def with_default_recipe(args: list[str]) -> list[str]:
    """``fit`` without any config (``--config``/``-c``) runs the quickstart recipe; any config given
    replaces it (compose with ``--config quickstart --config mine.yaml`` to keep it)."""
    has_config = any(a in CONFIG_FLAGS or a.startswith("--config=") for a in args[1:])
    if args and args[0] == "fit" and not has_config and not any(a in ("-h", "--help") for a in args[1:]):
        return [args[0], "--config", str(QUICKSTART), *args[1:]]
    return args


def run_lightning(args: list[str]) -> None:
    import warnings

    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    RedLLMCLI(args=with_default_recipe(resolve_config_args(args)))
