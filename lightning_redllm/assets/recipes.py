"""The packaged recipes: where they are, their names, and how a ``--config`` value finds one.

Below the command layer and the study (both take recipe names), so neither imports the other for it.
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path


def find_recipes() -> Path:
    """The folder of the packaged recipes: the repository's top-level ``recipes/``, which the wheel
    installs as ``lightning_redllm.recipes`` (an editable install maps that name to the folder).

    Run from a checkout's root (``python -m lightning_redllm`` puts the working directory first on
    ``sys.path``), the source tree's ``lightning_redllm/`` shadows an installed wheel and has no
    ``recipes`` subpackage: the recipes are then the checkout's ``recipes/`` beside it."""
    try:
        return Path(str(importlib.resources.files("lightning_redllm.recipes")))
    except ModuleNotFoundError:
        pass
    beside = Path(__file__).resolve().parents[2] / "recipes"
    if (beside / "quickstart.yaml").is_file():
        return beside
    raise ModuleNotFoundError(
        f"the packaged recipes are missing: no module lightning_redllm.recipes and no {beside}; reinstall the "
        "package (`pip install .` from the repository)")


#: the recipes shipped with the package (see :func:`find_recipes`)
RECIPES = find_recipes()
QUICKSTART = RECIPES / "quickstart.yaml"


def list_recipes() -> list[str]:
    """Names of the packaged recipes (``stage/pretrain.yaml``, ...), sorted."""
    return sorted(p.relative_to(RECIPES).as_posix() for p in RECIPES.rglob("*.yaml"))


def resolve_recipe(value: str) -> str:
    """One ``--config`` value: a file that exists is used as given; otherwise a packaged recipe by
    its path (``recipes/stage/pretrain.yaml``, as the README writes it) or name (``stage/pretrain``),
    so recipe commands work from any directory and for a non-editable install."""
    if any(ch in value for ch in "{}\n:") or Path(value).is_file():  # inline YAML, or a real file
        return value
    rel = value[len("recipes/"):] if value.startswith("recipes/") else value
    for candidate in (rel, f"{rel}.yaml"):  # a folder of the same name (study/cpu-study/: results) is no recipe
        if (RECIPES / candidate).is_file():
            return str(RECIPES / candidate)
    if Path(value).is_dir():
        raise IsADirectoryError(f"config {value} is a folder, not a YAML file (and no packaged recipe has that name; "
                                "list them with `python -m lightning_redllm recipes`)")
    raise FileNotFoundError(
        f"config file not found: {value} (neither in {Path.cwd()} nor among the packaged recipes; "
        "list them with `python -m lightning_redllm recipes`)")
