"""``python -m lightning_redllm``: LightningCLI (fit/validate/test/predict) plus extra subcommands.

Recipes compose: ``--config`` may be given several times; later files and dotted overrides win.
The parser runs in jsonargparse's ``omegaconf+`` mode, so a recipe may interpolate values from
another recipe (relative form ``${..data.init_args.seq_len}`` or absolute under the subcommand).
``fit`` with no ``--config`` runs ``recipes/quickstart.yaml`` (tiny RedLLM on the bundled corpus).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

from lightning.pytorch import Callback, LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from ..assets.recipes import QUICKSTART, resolve_recipe
from ..errors import ConfigError
from ..modules import LanguageModelModule


LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
CONFIG_FLAGS = ("--config", "-c")


def _yaml_text(data: Any, header: str) -> str:
    import yaml

    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True, width=120)


def _restore_dicts(dumped: Any, live: Any) -> Any:
    """jsonargparse dumps a ``dict`` value of a ``Union[str, Path, dict]`` parameter (DeepSpeed's
    ``config``) through the ``str`` branch, as a quoted Python repr, which reloads as a string (a
    path). Put the parsed dict back wherever that happened."""
    if isinstance(live, dict) and isinstance(dumped, str):
        return live
    if isinstance(dumped, dict) and isinstance(live, dict):
        return {k: _restore_dicts(v, live.get(k)) for k, v in dumped.items()}
    if isinstance(dumped, list) and isinstance(live, list) and len(dumped) == len(live):
        return [_restore_dicts(d, v) for d, v in zip(dumped, live)]
    return dumped


def _split_header(text: str) -> tuple[str, str]:
    lines = text.splitlines(keepends=True)
    n = 0
    while n < len(lines) and lines[n].startswith("#"):
        n += 1
    return "".join(lines[:n]), "".join(lines[n:])


class RedLLMArgumentParser(LightningArgumentParser):
    """Dumps (``--print_config``, the run's ``config.yaml``) that load back as they were parsed:
    a DeepSpeed config dict stays a YAML mapping (see :func:`_restore_dicts`)."""

    def dump(self, namespace, format: str = "parser_mode", **kwargs: Any) -> str:
        import yaml

        text = super().dump(namespace, format=format, **kwargs)
        if format != "yaml" and not (format == "parser_mode" and str(self.parser_mode).startswith(("yaml", "omegaconf"))):
            return text
        header, body = _split_header(text)
        dumped = yaml.safe_load(body)
        fixed = _restore_dicts(dumped, namespace.clone(with_meta=False).as_dict())
        return text if fixed == dumped else _yaml_text(fixed, header)


#: the callback/logger options that hold a folder, and the trainer key they default under
_RUN_PATH_KEYS = {"logger": ("save_dir",), "callbacks": ("dirpath",)}


def relink_run_paths(config: dict) -> dict:
    """Paths of the loggers and callbacks that lie inside ``trainer.default_root_dir`` are written
    relative to it (``${....default_root_dir}/checkpoints``, the recipes' own form), so that the
    saved config re-run with ``--trainer.default_root_dir NEW`` writes everything into NEW."""
    trainer = config.get("trainer")
    root = trainer.get("default_root_dir") if isinstance(trainer, dict) else None
    if not isinstance(root, str) or not root:
        return config
    base = root.rstrip("/") or "/"
    for section, keys in _RUN_PATH_KEYS.items():
        entries = trainer.get(section)
        # relative interpolation from <entry>.init_args.<key> up to the trainer node
        up = "...." if isinstance(entries, list) else "..."
        for entry in entries if isinstance(entries, list) else [entries]:
            init_args = entry.get("init_args") if isinstance(entry, dict) else None
            if not isinstance(init_args, dict):
                continue
            for key in keys:
                value = init_args.get(key)
                if not isinstance(value, str):
                    continue
                ref = "${" + up + "default_root_dir}"
                if value in (root, base):
                    init_args[key] = ref
                elif value.startswith(base.rstrip("/") + "/"):
                    init_args[key] = ref + value[len(base.rstrip("/")):]
    return config


class RunConfigSaver(SaveConfigCallback):
    """Writes the run's ``<log_dir>/config.yaml`` (rank 0, atomically) so that it re-runs: dicts as
    mappings, and the run's folders relative to ``trainer.default_root_dir`` (see
    :func:`relink_run_paths`): ``fit --config runs/a/logs/version_0/config.yaml
    --trainer.default_root_dir runs/b`` trains the same run into ``runs/b``."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.already_saved:
            return
        log_dir = trainer.log_dir  # broadcasts the folder
        if trainer.is_global_zero and log_dir is not None:
            import yaml

            from ..reliability import atomic_write

            text = self.parser.dump(self.config, skip_none=False)
            header, body = _split_header(text)
            text = _yaml_text(relink_run_paths(yaml.safe_load(body)), header)
            atomic_write(Path(log_dir) / self.config_filename, lambda f: f.write(text.encode()))
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True
        self.already_saved = trainer.strategy.broadcast(self.already_saved)


class _Progressed(Callback):
    """Notes whether any loop finished a batch (a run that did nothing leaves no folders behind)."""

    def __init__(self) -> None:
        self.any = False

    def on_train_batch_end(self, *args: Any) -> None:
        self.any = True

    on_validation_batch_end = on_test_batch_end = on_predict_batch_end = on_train_batch_end


#: what Lightning's loggers write at the start of a run, before any metric
_START_FILES = ("config.yaml", "hparams.yaml", "metrics.csv", "events.out.tfevents.")


class _NewRunFolders:
    """The run folders (root, logger version folders, checkpoint folder) that a run is about to
    create; :meth:`remove` deletes those it did create, if they hold only start-up files."""

    def __init__(self, trainer) -> None:
        self.dirs: list[Path] = [Path(trainer.default_root_dir)]
        self.logger_roots: list[Path] = []
        for logger in trainer.loggers:
            root = getattr(logger, "root_dir", None)
            if isinstance(root, (str, os.PathLike)) and "://" not in str(root):
                self.logger_roots.append(Path(root))
        for cb in trainer.checkpoint_callbacks:
            if getattr(cb, "dirpath", None) and "://" not in str(cb.dirpath):
                self.dirs.append(Path(cb.dirpath))
        self.dirs += self.logger_roots
        self.existed = {d: d.exists() for d in self.dirs}
        self.children = {d: {c.name for c in d.iterdir()} if d.is_dir() else set() for d in self.logger_roots}

    def remove(self) -> None:
        for root in self.logger_roots:
            if not root.is_dir():
                continue
            for child in root.iterdir():
                if child.name in self.children[root] or not child.is_dir():
                    continue
                files = [f for f in child.rglob("*") if f.is_file()]
                if all(f.name.startswith(_START_FILES) for f in files):
                    shutil.rmtree(child, ignore_errors=True)
        # then the folders this run created, deepest first, if empty now
        for d in sorted(self.dirs, key=lambda d: len(d.resolve().parts), reverse=True):
            if not self.existed[d] and d.is_dir() and not any(d.iterdir()):
                d.rmdir()


def _strategy_name(strategy: Any) -> str:
    if isinstance(strategy, str):
        return strategy
    return str(getattr(strategy, "class_path", None) or (strategy.get("class_path") if isinstance(strategy, dict)
                                                          else type(strategy).__name__))


def _cuda_only_deepspeed(strategy: Any) -> bool:
    """Lightning's DeepSpeedStrategy (a registry name, the class, or a subclass that keeps its
    ``setup_environment``, where Lightning refuses anything but CUDA). A subclass that overrides it
    (a CPU test harness, another accelerator) is left to run."""
    import importlib

    from lightning.pytorch.strategies import DeepSpeedStrategy

    name = _strategy_name(strategy)
    if isinstance(strategy, str):
        return name.lower().startswith("deepspeed")
    module, _, attr = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module or "lightning.pytorch.strategies"), attr)
    except (ImportError, AttributeError, ValueError):
        return False
    return (isinstance(cls, type) and issubclass(cls, DeepSpeedStrategy)
            and cls.setup_environment is DeepSpeedStrategy.setup_environment)


class RedLLMCLI(LightningCLI):
    """LightningCLI with the module/datamodule base classes of this package (subclass mode: any
    subclass is selected with ``--model.class_path`` / ``--data.class_path``)."""

    def __init__(self, args: Optional[Sequence[str]] = None,
                 strategy_config_overrides: Sequence[tuple[list[str], Any]] = (), **kwargs):
        self._strategy_config_overrides = list(strategy_config_overrides)
        self._args = list(args or [])
        kwargs.setdefault("parser_class", RedLLMArgumentParser)
        kwargs.setdefault("save_config_callback", RunConfigSaver)
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
        """Refuse a strategy/accelerator this machine cannot run (one line, before Lightning's
        traceback); merge ``--trainer.strategy.init_args.config.KEY.SUBKEY VALUE`` flags into the
        strategy's config dict key by key (see :func:`split_strategy_config_overrides`)."""
        sub = self.config.get("subcommand")
        cfg = self.config[sub] if sub else self.config
        self._check_devices(cfg.trainer)
        if not self._strategy_config_overrides:
            return
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

    def _check_devices(self, trainer_cfg) -> None:
        import torch

        from .config_errors import where_set

        accelerator = str(trainer_cfg.get("accelerator") or "auto")
        strategy = _strategy_name(trainer_cfg.get("strategy"))
        if torch.cuda.is_available():
            return
        have = "trainer.accelerator is cpu" if accelerator == "cpu" else "this machine has no CUDA GPU"
        if _cuda_only_deepspeed(trainer_cfg.get("strategy")):
            where = where_set("trainer.strategy", self._args)
            where = f"{where}: " if where.startswith("flag ") or ":" in where else ""
            raise ConfigError(
                f"{where.removeprefix('flag ')}DeepSpeed ({strategy.rsplit('.', 1)[-1]}) runs on CUDA GPUs only, "
                f"and {have}",
                "on this machine drop the DeepSpeed recipe and use --config strategy/cpu; run ZeRO-3 on a machine "
                "with CUDA GPUs (`python -m lightning_redllm plan` sizes it)")
        if accelerator in ("gpu", "cuda"):
            where = where_set("trainer.accelerator", self._args)
            where = where.removeprefix("flag ") if where != "the composed config" else "trainer.accelerator"
            raise ConfigError(f"{where}: accelerator {accelerator!r}, but this machine has no CUDA GPU",
                              "train on the CPU with --trainer.accelerator cpu --trainer.devices 1 "
                              "(or --config strategy/cpu)")

    def _run_subcommand(self, subcommand: str) -> None:
        """Lightning's, plus: a run that fails before finishing a single batch removes the folders it
        created (logger ``version_N`` folders with only the saved config, an empty checkpoint
        folder), so a retry is ``version_0`` again and no empty run is left behind."""
        progressed = _Progressed()
        self.trainer.callbacks.append(progressed)
        folders = _NewRunFolders(self.trainer)
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            if not progressed.any and self.trainer.is_global_zero:
                folders.remove()
            raise

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
            from ..reliability import verify_torch_archive

            verify_torch_archive(path)


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

    from .config_errors import HELP_HINT, check_config_files, explain_parser_error

    args = with_default_recipe(resolve_config_args(args))
    check_config_files(args)
    args, strategy_overrides = split_strategy_config_overrides(args)
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        RedLLMCLI(args=args, strategy_config_overrides=strategy_overrides)
    except ArgumentError as err:
        raise explain_parser_error(str(err), args) from None
    except MisconfigurationException as err:  # Lightning refusing a trainer setting: a user error, one line
        raise ConfigError(f"Lightning refused the trainer settings: {' '.join(str(err).split())}",
                          HELP_HINT.format(sub=args[0] if args else "fit")) from None
