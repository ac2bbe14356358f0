"""The package's import graph has no cycles, lazy (function-level) imports included: a lazy import
inside a cycle only hides an ordering bug until someone moves it to the top of the file."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lightning_redllm

PKG = Path(lightning_redllm.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(current: str, is_pkg: bool, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        parts = current.split(".")
        if not is_pkg:
            parts = parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    out = [base]
    for alias in node.names:  # `from . import x` may import the submodule x
        out.append(f"{base}.{alias.name}")
    return out


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                targets = _resolve(mod, is_pkg, node)
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                # a module importing its own parent package (``from . import x``) is not a cycle
                if t in files and t != mod and not mod.startswith(t + "."):
                    graph[mod].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_finder_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_in_the_package():
    graph = import_graph()
    assert "lightning_redllm.errors" in graph and not graph["lightning_redllm.errors"], "errors.py is the bottom floor"
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


# -- the study's room ------------------------------------------------------------------------------

STUDY = "lightning_redllm.study"
#: the study's modules, bottom floor first: each may import only from floors below its own
STUDY_FLOORS = [
    ["config", "paired"],
    ["files", "plan", "findings"],
    ["runner", "scoring", "report", "evaluations.context"],
    ["fit", "evaluations.efficiency", "evaluations.extrapolation", "evaluations.instruct",
     "evaluations.lm_eval_tasks", "evaluations.perplexity", "evaluations.scaling", "evaluations.zero_shot",
     "evaluations.ablations"],
    ["evaluations", "report_stage"],
    ["driver"],
    ["command"],
    [""],  # the package's __init__: the public names
]
#: the command layer (above the study: it dispatches to it)
COMMAND_LAYER = ("lightning_redllm.cli.lightning_cli", "lightning_redllm.cli.config_errors", "lightning_redllm.cli.commands",
                 "lightning_redllm.__main__", "lightning_redllm.cli.progress", "lightning_redllm.cli.predictions",
                 "lightning_redllm.cli.lm_eval")
#: arrows from the study up into the command layer that exist today, each with its reason; the test fails
#: when one disappears too, so the list shrinks with the code
KNOWN_CLIMBS: set[tuple[str, str]] = set()


def _in_command_layer(mod: str) -> bool:
    return any(mod == c or mod.startswith(c + ".") for c in COMMAND_LAYER)


def _study_floor(mod: str) -> int:
    name = mod[len(STUDY) + 1:] if mod != STUDY else ""
    for i, floor in enumerate(STUDY_FLOORS):
        if name in floor:
            return i
    raise AssertionError(f"{mod}: not on any floor of STUDY_FLOORS; put it on one")


def test_study_floors_point_down():
    graph = import_graph()
    study = sorted(m for m in graph if m == STUDY or m.startswith(STUDY + "."))
    assert len(study) >= 15, study  # the room exists and the graph sees it
    up, climbs = [], set()
    for mod in study:
        for dep in graph[mod]:
            if dep == STUDY or dep.startswith(STUDY + "."):
                if _study_floor(dep) >= _study_floor(mod):
                    up.append(f"{mod} -> {dep}")
            elif _in_command_layer(dep):
                climbs.add((mod, dep))
    assert not up, "study modules importing a floor at or above their own: " + ", ".join(up)
    assert climbs == KNOWN_CLIMBS, f"arrows from the study into the command layer: {sorted(climbs)}"
    # below the study nothing imports it (the command layer dispatches to it by name, at run time)
    users = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
                   if (d == STUDY or d.startswith(STUDY + ".")) and not (m == STUDY or m.startswith(STUDY + "."))
                   and not _in_command_layer(m))
    assert not users, "modules below the study importing it: " + ", ".join(users)


# -- the package's floors ---------------------------------------------------------------------------

#: the package by floor, bottom first: a module imports only from its own floor or below. A module's
#: floor is that of the longest listed name it is (or is inside). The ``hf`` folder spans two floors:
#: reading an exported folder (``convert``, ``weights``, ``folder``) sits below ``modules.checkpoint``,
#: which loads every checkpoint format, and exporting (``hf.export``) sits above it.
PACKAGE_FLOORS = [
    ["errors", "config", "assets"],                          # the base: imports nothing of the package's
    ["nn", "tokenizer", "reliability", "hf.convert", "hf.weights"],
    ["models", "data", "scale", "hf.folder"],
    ["modules"],                                             # the LightningModules
    ["generate", "hf"],                                      # decoding, loading for inference, export
    ["eval"],
    ["study"],
    ["cli"],                                                 # the command layer
    ["__main__", "lm_eval"],                                 # the entry points
]
#: what may sit at the package's root: the base floor's modules and the entry points; everything else
#: lives in a folder named for its layer
ROOT_MODULES = {"__init__", "__main__", "config", "errors", "lm_eval", "reliability", "tokenizer"}


def _package_floor(mod: str) -> int:
    name = mod[len("lightning_redllm."):]
    best, floor = -1, None
    for i, names in enumerate(PACKAGE_FLOORS):
        for n in names:
            if (name == n or name.startswith(n + ".")) and len(n) > best:
                best, floor = len(n), i
    if floor is None:
        raise AssertionError(f"{mod}: on no floor of PACKAGE_FLOORS; put it on one")
    return floor


def test_package_floors_point_down():
    graph = import_graph()
    up = sorted(f"{m} -> {d}" for m, deps in graph.items() if m != "lightning_redllm" for d in deps
                if _package_floor(d) > _package_floor(m))
    assert not up, "imports from a higher floor: " + ", ".join(up)
    base = sorted(f"{m} -> {d}" for m, deps in graph.items() if m != "lightning_redllm" and _package_floor(m) == 0
                  for d in deps if d.split(".")[:2] != m.split(".")[:2])
    assert not base, "the base floor imports the package: " + ", ".join(base)


def test_the_root_holds_the_base_and_the_entry_points_only():
    root = {p.stem for p in PKG.glob("*.py")}
    assert root == ROOT_MODULES, f"modules at the package root: {sorted(root - ROOT_MODULES)} (put them in a " \
                                 f"folder), missing: {sorted(ROOT_MODULES - root)}"


def test_floor_rule_sees_a_climb():
    """The rule can fail: the floors order the rooms as the architecture does, longest name first."""
    assert _package_floor("lightning_redllm.errors") < _package_floor("lightning_redllm.cli.commands")
    assert _package_floor("lightning_redllm.hf.folder") < _package_floor("lightning_redllm.modules.checkpoint") \
        < _package_floor("lightning_redllm.hf.export")
    with pytest.raises(AssertionError, match="on no floor"):
        _package_floor("lightning_redllm.newroom.x")


# -- what the light commands import -------------------------------------------------------------------

LIGHT_PATHS = ["lightning_redllm.__main__", "lightning_redllm.cli.commands", "lightning_redllm.cli.guard",
               "lightning_redllm.generate", "lightning_redllm.modules.checkpoint", "lightning_redllm.hf.export",
               "lightning_redllm.reliability", "lightning_redllm.scale.plan"]


def test_generate_export_and_help_never_import_lightning():
    """``generate``, ``export``, ``plan`` and ``--help`` read checkpoints and print; importing Lightning
    (~5 s: torchmetrics, transformers, scipy) is for ``fit`` and friends only. A fresh interpreter
    imports every module those commands load, then the lazy public names, in that order."""
    code = (f"import importlib, sys\nfor m in {LIGHT_PATHS!r}: importlib.import_module(m)\n"
            "heavy = sorted(m for m in sys.modules if m == 'lightning' or m.startswith(('lightning.', 'torchmetrics')))\n"
            "assert not heavy, heavy[:5]\n"
            "from lightning_redllm.modules import RedLLMModule, LanguageModelModule\n"
            "from lightning_redllm.reliability import AtomicCheckpointIO\n"
            "from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO\n"
            "assert issubclass(RedLLMModule, LanguageModelModule) and issubclass(AtomicCheckpointIO, TorchCheckpointIO)\n"
            "assert AtomicCheckpointIO.__module__ == 'lightning_redllm.reliability'\n"
            "print('ok')")
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]
