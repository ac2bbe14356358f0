"""``python -m lightning_redllm``: LightningCLI (fit/validate/test/predict) plus extra subcommands.

Recipes compose: ``--config`` may be given several times; later files and dotted overrides win.
The parser runs in jsonargparse's ``omegaconf+`` mode, so a recipe may interpolate values from
another recipe (relative form ``${..data.init_args.seq_len}`` or absolute under the subcommand).
``fit`` with no ``--config`` runs ``recipes/quickstart.yaml`` (tiny RedLLM on the bundled corpus).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI

from .modules import LanguageModelModule

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
QUICKSTART = RECIPES / "quickstart.yaml"
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


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


def with_default_recipe(args: list[str]) -> list[str]:
    """``fit`` without any ``--config`` gets the quickstart recipe first (overrides still apply)."""
    if args and args[0] == "fit" and not any(a == "--config" or a.startswith("--config=") for a in args[1:]) \
            and not any(a in ("-h", "--help") for a in args[1:]):
        return [args[0], "--config", str(QUICKSTART), *args[1:]]
    return args


def run_lightning(args: list[str]) -> None:
    import warnings

    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    RedLLMCLI(args=with_default_recipe(args))
