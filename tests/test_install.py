"""The package as a user installs it: a non-editable wheel in a fresh virtual environment, run from
a directory outside the checkout — the embedded default, a recipe composition by the README's
paths, the recipe listing and the console script — and from the clone's root, where the checkout's
``lightning_redllm/`` shadows the installed wheel (``python -m`` puts the working directory first on
``sys.path``) and has no ``recipes`` subpackage."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(cmd, cwd, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv python, wheel path, an empty work folder outside the checkout)."""
    import setuptools

    # torch itself depends on setuptools, so a recent one is always there; 70.1+ builds wheels alone
    assert tuple(int(x) for x in setuptools.__version__.split(".")[:2]) >= (70, 1), setuptools.__version__
    root = tmp_path_factory.mktemp("install")
    r = _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", str(REPO),
              "-w", str(root / "dist")], cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = next((root / "dist").glob("lightning_redllm-*.whl"))
    # the dependencies (torch, lightning, ...) come from this interpreter; the package from the wheel.
    # Not --system-site-packages: that would also run the .pth files there, and with this checkout
    # installed editable (as in development and CI) its import hook maps `lightning_redllm.recipes` to
    # the checkout's recipes/ -- a user's venv has no such hook. A .pth line naming a folder only adds
    # it to sys.path (the .pth files inside it are not processed).
    import sysconfig

    r = _run([sys.executable, "-m", "venv", str(root / "venv")], cwd=root)
    assert r.returncode == 0, r.stderr
    py = root / "venv" / "bin" / "python"
    r = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root)
    venv_site = Path(r.stdout.strip())
    # this interpreter's site folders, and the ones it sees through --system-site-packages (a venv over
    # a system install keeps torch and friends there)
    outer = dict.fromkeys([*(sysconfig.get_paths()[k] for k in ("purelib", "platlib")),
                           *(p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir())])
    (venv_site / "outer-site-packages.pth").write_text("\n".join(outer) + "\n")
    r = _run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    work = root / "work"
    work.mkdir()
    return py, wheel, work


def test_wheel_holds_every_package_recipe_and_asset(installed):
    _, wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = [p.parent.relative_to(REPO).as_posix() for p in (REPO / "lightning_redllm").rglob("__init__.py")]
    packages += ["data_pipelines"]
    for pkg in packages:
        assert f"{pkg}/__init__.py" in names, f"package {pkg} missing from the wheel (pyproject packages list)"
    recipes = [p.relative_to(REPO / "recipes").as_posix() for p in (REPO / "recipes").rglob("*.yaml")]
    assert recipes
    for rec in recipes:
        assert f"lightning_redllm/recipes/{rec}" in names, rec
    for asset in ("tokenizers/bundled-bpe-4k.json", "shards/pretrain/train/manifest.json",
                  "shards/instruct/val/manifest.json", "lm_eval_tasks/bundled.py",
                  "lm_eval_tasks/bundled_continuation_mc.yaml"):
        assert f"lightning_redllm/assets/{asset}" in names, asset


def test_installed_package_is_the_wheel_not_the_checkout(installed):
    py, _, work = installed
    r = _run([str(py), "-c", "import lightning_redllm, lightning_redllm.assets.recipes as c; "
                             "print(lightning_redllm.__file__); print(c.RECIPES)"], cwd=work)
    assert r.returncode == 0, r.stderr
    module_file, recipes = r.stdout.split()
    venv = str(py.parent.parent)
    assert module_file.startswith(venv) and recipes.startswith(venv), r.stdout


def test_embedded_default_fit_from_outside_the_checkout(installed):
    py, _, work = installed
    r = _run([str(py), "-m", "lightning_redllm", "fit", "--trainer.max_steps", "3",
              "--data.init_args.num_workers", "0"], cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (work / "runs" / "quickstart" / "checkpoints" / "last.ckpt").is_file()


def test_recipe_composition_by_readme_paths_from_outside_the_checkout(installed):
    py, _, work = installed
    assert not (work / "recipes").exists()
    r = _run([str(py), "-m", "lightning_redllm", "fit", "--config", "recipes/stage/pretrain.yaml",
              "--config", "recipes/model/decllm-tiny.yaml", "--config", "data/bundled-pretrain",
              "--config", "recipes/strategy/cpu.yaml", "--trainer.max_steps", "2",
              "--trainer.accumulate_grad_batches", "1", "--data.init_args.num_workers", "0",
              "--data.init_args.batch_size", "2", "--trainer.default_root_dir", "composed"], cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (work / "composed" / "checkpoints" / "last.ckpt").is_file()
    # a name that is nowhere: one line that says where it looked
    r = _run([str(py), "-m", "lightning_redllm", "fit", "--config", "recipes/stage/pretrian.yaml"], cwd=work)
    assert r.returncode != 0
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "recipes/stage/pretrian.yaml" in err[0] and "packaged recipes" in err[0], r.stderr


def test_console_script_lists_the_recipes(installed):
    py, _, work = installed
    r = _run([str(py.parent / "redllm"), "recipes"], cwd=work)
    assert r.returncode == 0, r.stderr
    assert "stage/pretrain.yaml" in r.stdout and "model/redllm-8b.yaml" in r.stdout


def test_from_the_clone_root_the_shadowing_checkout_finds_its_recipes(installed, tmp_path):
    """`pip install .` (not editable), then commands where the user stands: the clone's root."""
    py, _, _ = installed
    top = sorted(p.name for p in REPO.iterdir())
    r = _run([str(py), "-c", "import lightning_redllm, importlib.util as u; print(lightning_redllm.__file__); "
                             "print(u.find_spec('lightning_redllm.recipes'))"], cwd=REPO)
    assert r.returncode == 0, r.stderr
    module_file, spec = r.stdout.split("\n", 1)
    # the situation: the checkout's package is imported, and it has no recipes subpackage
    assert module_file == str(REPO / "lightning_redllm" / "__init__.py") and spec.strip() == "None", r.stdout
    r = _run([str(py), "-m", "lightning_redllm", "recipes"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"recipes in {REPO / 'recipes'}:" in r.stdout and "  stage/pretrain.yaml" in r.stdout
    out = tmp_path / "run"
    r = _run([str(py), "-m", "lightning_redllm", "fit", "--config", "recipes/stage/pretrain.yaml",
              "--config", "model/decllm-tiny", "--config", "data/bundled-pretrain", "--config", "strategy/cpu",
              "--trainer.max_steps", "2", "--trainer.accumulate_grad_batches", "1",
              "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "2",
              "--data.init_args.seq_len", "64", "--trainer.default_root_dir", str(out)], cwd=REPO)
    # recipes/stage/pretrain.yaml is the clone's file; model/decllm-tiny etc. are looked up by name
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert sorted(p.name for p in REPO.iterdir()) == top  # nothing written into the clone
