"""``python -m lightning_redllm``: LightningCLI (fit/validate/test/predict) plus extra subcommands.

Recipes compose: ``--config`` may be given several times; later files and dotted overrides win.
The parser runs in jsonargparse's ``omegaconf+`` mode, so a recipe may interpolate values from
another recipe (relative form ``${..data.init_args.seq_len}`` or absolute under the subcommand).
``fit`` with no ``--config`` runs ``recipes/quickstart.yaml`` (tiny RedLLM on the bundled corpus).
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any, Optional, Sequence

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI

from .errors import ConfigError
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

    def __init__(self, args: Optional[Sequence[str]] = None,
                 strategy_config_overrides: Sequence[tuple[list[str], Any]] = (), **kwargs):
        self._strategy_config_overrides = list(strategy_config_overrides)
        # errors raise (exit_on_error=False) so run_lightning can report them in one line
        parser = {"parser_mode": "omegaconf+", "exit_on_error": False}
        kwargs.setdefault("parser_kwargs", {"prog": "python -m lightning_redllm", **parser,
                                            **{sub: dict(parser) for sub in LIGHTNING_SUBCOMMANDS}})
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("auto_configure_optimizers", False)
        from .progress import ProgressDefaults, silence_lightning_tips

        silence_lightning_tips()  # Lightning's litlogger/litmodels adverts (no switch in Lightning 2.6)
        # crash-safe checkpoint writes (temp + fsync + rename) and weights_only loads by default;
        # `--trainer.plugins+=X` adds to it, `--trainer.plugins X` replaces it.
        # ProgressDefaults (a persistent callback, in every run whatever the recipe): step-based bar on
        # a terminal, plain progress lines every `log_every_n_steps` / 30 s otherwise, no `Total FLOPs: 0`;
        # `--trainer.enable_progress_bar false` still turns progress output off.
        kwargs.setdefault("trainer_defaults", {
            "plugins": [{"class_path": "lightning_redllm.reliability.AtomicCheckpointIO"}],
            "callbacks": [ProgressDefaults()],
        })
        super().__init__(LanguageModelModule, LightningDataModule, subclass_mode_model=True,
                         subclass_mode_data=True, args=args, **kwargs)

    def before_instantiate_classes(self) -> None:
        """Merge ``--trainer.strategy.init_args.config.KEY.SUBKEY VALUE`` flags into the strategy's
        config dict key by key (see :func:`split_strategy_config_overrides`)."""
        if not self._strategy_config_overrides:
            return
        sub = self.config.get("subcommand")
        cfg = self.config[sub] if sub else self.config
        strategy = cfg.trainer.get("strategy")
        init_args = getattr(strategy, "init_args", None)
        config = init_args.get("config") if init_args is not None else None
        if not isinstance(config, dict):
            flag = STRATEGY_CONFIG_FLAG + ".".join(self._strategy_config_overrides[0][0])
            raise ConfigError(f"{flag} edits a strategy's config dict, but the strategy ({strategy!r}) has none; "
                              "compose a DeepSpeed recipe first (e.g. --config strategy/zero3)")
        for path, value in self._strategy_config_overrides:
            node = config
            for key in path[:-1]:
                if not isinstance(node.get(key, {}), dict):
                    raise ConfigError(f"{STRATEGY_CONFIG_FLAG}{'.'.join(path)}: {key!r} is not a section of "
                                      "the strategy config")
                node = node.setdefault(key, {})
            node[path[-1]] = value

    def before_fit(self) -> None:
        """A run folder belongs to one run. Lightning would write ``last-v1.ckpt`` beside an older
        run's ``last.ckpt``, and every later ``init_from: .../last.ckpt`` / ``generate --ckpt`` would
        silently use the stale weights. So ``fit`` into a checkpoint folder that already holds
        checkpoints must resume it (``--ckpt_path`` to a file in it, or ``last``) — anything else is
        refused before any work, naming the folder and the ways out."""
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
        for cb in self.trainer.checkpoint_callbacks:
            # one run per folder (checked below), so `last.ckpt` is always this run's: never let
            # Lightning version it to `last-v1.ckpt` (it does when a resumed folder was moved or copied)
            if hasattr(cb, "_enable_version_counter"):
                cb._enable_version_counter = False
            folder = Path(cb.dirpath) if getattr(cb, "dirpath", None) else None
            if folder is None or not folder.is_dir():
                continue
            existing = sorted(p.name for p in folder.glob("*.ckpt"))
            if not existing:
                continue
            resuming = ckpt_path == "last" or (
                ckpt_path and Path(ckpt_path).exists() and Path(ckpt_path).resolve().parent == folder.resolve())
            if not resuming:
                shown = ", ".join(existing[:3]) + (", ..." if len(existing) > 3 else "")
                raise ConfigError(
                    f"checkpoint folder {folder} already holds another run's checkpoints ({shown})",
                    f"resume it with --ckpt_path {folder / ('last.ckpt' if 'last.ckpt' in existing else existing[-1])}, "
                    "write elsewhere with --trainer.default_root_dir DIR, or remove the folder")

    def before_predict(self) -> None:
        """``predict`` writes its per-example scores (and prints a summary) unless the config brings
        its own ``BasePredictionWriter``."""
        from lightning.pytorch.callbacks import BasePredictionWriter

        from .predictions import PredictionWriter

        if not any(isinstance(cb, BasePredictionWriter) for cb in self.trainer.callbacks):
            self.trainer.callbacks.append(PredictionWriter())

    def _parse_ckpt_path(self) -> None:
        """Replaces LightningCLI's: it copied the checkpoint's hyperparameters (and model class) over
        the user's config, so ``--model DecLLMModule --ckpt_path <a RedLLM run>`` silently trained a
        RedLLM and a changed ``lr`` was silently dropped. Here the user's config stands; the module's
        ``on_load_checkpoint`` refuses another family/size/optimizer/tokenizer and announces changed
        hyperparameters. This only checks, before any work, that the file exists and is a complete
        archive (one line naming it otherwise); the Trainer then reads it once with the package's
        weights-only loader, whose errors name the file too."""
        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if not ckpt_path or ckpt_path in ("last", "best", "hpc", "registry") or "://" in str(ckpt_path):
            return  # Lightning's named checkpoints and remote paths are resolved by the Trainer
        path = Path(ckpt_path)
        if not path.exists():
            raise FileNotFoundError(f"--ckpt_path: checkpoint not found: {path}")
        if path.is_file():
            from .reliability import verify_torch_archive

            verify_torch_archive(path)


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


#: dotted flags under this prefix edit the strategy's config dict (DeepSpeed's JSON config) key by key
STRATEGY_CONFIG_FLAG = "--trainer.strategy.init_args.config."


def split_strategy_config_overrides(args: list[str]) -> tuple[list[str], list[tuple[list[str], Any]]]:
    """Take ``--trainer.strategy.init_args.config.a.b VALUE`` (or ``=VALUE``) flags out of ``args``.

    The DeepSpeed config is one ``dict`` argument to jsonargparse: such a flag would *replace* the
    recipe's whole dict with ``{a: {b: "VALUE"}}`` (dropping ``stage: 3`` and every other key) and
    keep VALUE a string. Returned instead as (key path, YAML-parsed value) pairs, which
    :meth:`RedLLMCLI.before_instantiate_classes` merges into the parsed dict, so
    ``...config.zero_optimization.reduce_bucket_size 4194304`` changes that one integer.
    """
    import yaml

    rest: list[str] = []
    overrides: list[tuple[list[str], Any]] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith(STRATEGY_CONFIG_FLAG):
            key, eq, value = a[len(STRATEGY_CONFIG_FLAG):].partition("=")
            if not eq:
                if i + 1 >= len(args):
                    raise ConfigError(f"{a} needs a value")
                value = args[i + 1]
                i += 1
            path = key.split(".")
            if not all(path):
                raise ConfigError(f"{a}: empty key in the dotted path")
            try:
                overrides.append((path, yaml.safe_load(value)))
            except yaml.YAMLError as err:
                raise ConfigError(f"{STRATEGY_CONFIG_FLAG}{key}: value {value!r} is not valid YAML ({err})") from None
        else:
            rest.append(a)
        i += 1
    return rest, overrides


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
    # streamed (iterable) data has no sampler indices; PredictionWriter numbers examples itself
    warnings.filterwarnings("ignore", message=".*Couldn't infer the batch indices fetched from your dataloader.*")
    # the module's on_before_batch_transfer (objective + input checks on the CPU batch) is meant to win
    warnings.filterwarnings("ignore", message=".*overridden `on_before_batch_transfer` in `LightningModule`.*")
    from jsonargparse import ArgumentError

    from .cli_errors import check_config_files, explain_parser_error

    args = with_default_recipe(resolve_config_args(args))
    check_config_files(args)
    args, strategy_overrides = split_strategy_config_overrides(args)
    try:
        RedLLMCLI(args=args, strategy_config_overrides=strategy_overrides)
    except ArgumentError as err:
        raise explain_parser_error(str(err), args) from None
