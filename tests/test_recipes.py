"""Every recipe under recipes/ parses against the code (so none can drift) and the documented
compositions instantiate their model and data classes."""
from __future__ import annotations


import pytest

from lightning_redllm.assets.recipes import QUICKSTART, RECIPES, resolve_recipe
from lightning_redllm.cli.lightning_cli import RedLLMCLI, with_default_recipe

# recipes/study/*.yaml are study files for the `study` command, not Lightning configs (tests/test_study.py loads them)
ALL = sorted(p.relative_to(RECIPES).as_posix() for p in RECIPES.rglob("*.yaml") if not p.relative_to(RECIPES).match("study/*"))


def _print_config(args, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        RedLLMCLI(args=["fit", *args, "--print_config"])
    assert exc.value.code in (0, None)
    return capsys.readouterr().out


def test_recipes_are_found():
    for group in ("model", "data", "strategy", "stage"):
        assert any(r.startswith(group + "/") for r in ALL), group
    assert "quickstart.yaml" in ALL


def test_a_folder_named_like_a_recipe_is_not_taken_for_it(tmp_path, monkeypatch):
    """From the repository root `study/cpu-study/` (the study's results) sits beside the packaged
    `study/cpu-study.yaml`: the name finds the recipe; a folder matching no recipe is refused by name;
    a real file in the working directory still wins."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study" / "cpu-study").mkdir(parents=True)
    assert resolve_recipe("study/cpu-study") == str(RECIPES / "study" / "cpu-study.yaml")
    (tmp_path / "results").mkdir()
    with pytest.raises(IsADirectoryError, match="config results is a folder"):
        resolve_recipe("results")
    (tmp_path / "quickstart.yaml").write_text("trainer: {max_steps: 1}\n")
    assert resolve_recipe("quickstart.yaml") == "quickstart.yaml"


@pytest.mark.parametrize("recipe", ALL)
def test_each_recipe_composes_with_the_quickstart(recipe, capsys):
    out = _print_config(["--config", str(QUICKSTART), "--config", str(RECIPES / recipe)], capsys)
    assert "class_path: lightning_redllm" in out


@pytest.mark.parametrize("family", ["redllm", "decllm"])
@pytest.mark.parametrize("size", ["tiny", "150m", "1b", "2b", "4b", "8b"])
def test_study_compositions_instantiate(family, size):
    """stage + model + data: classes build (the model itself is created lazily in configure_model)."""
    data = "bundled-pretrain.yaml" if size == "tiny" else "redpajama.yaml"
    cli = RedLLMCLI(args=["--config", str(RECIPES / "stage/pretrain.yaml"),
                          "--config", str(RECIPES / f"model/{family}-{size}.yaml"),
                          "--config", str(RECIPES / f"data/{data}"), "--trainer.accelerator", "cpu",
                          "--trainer.precision", "32-true", "--trainer.logger", "false"], run=False)
    assert cli.model.config.family == family
    assert cli.model.model is None  # nothing allocated before the strategy's configure_model
    assert cli.model.hparams.lr == 0.01 and cli.model.hparams.optimizer == "adafactor"
    assert cli.trainer.gradient_clip_val == 1.0


def test_instruct_stage_sets_dropout_and_constant_lr():
    cli = RedLLMCLI(args=["--config", str(RECIPES / "stage/instruct.yaml"),
                          "--config", str(RECIPES / "model/decllm-tiny.yaml"),
                          "--config", str(RECIPES / "data/bundled-instruct.yaml"),
                          "--model.init_args.bidirectional_prefix", "true", "--trainer.accelerator", "cpu",
                          "--trainer.precision", "32-true", "--trainer.logger", "false"], run=False)
    assert cli.model.config.dropout == 0.05
    assert cli.model.hparams.schedule == "constant" and cli.model.bidirectional_prefix


def test_omegaconf_interpolation_follows_overrides(tmp_path, capsys):
    extra = tmp_path / "interp.yaml"
    extra.write_text("model:\n  init_args:\n    warmup_steps: ${.decay_steps}\n    decay_steps: 77\n")
    out = _print_config(["--config", str(QUICKSTART), "--config", str(extra), "--model.init_args.decay_steps", "55"],
                        capsys)
    assert "warmup_steps: 55" in out


def test_default_recipe_only_without_config():
    assert with_default_recipe(["fit"])[:3] == ["fit", "--config", str(QUICKSTART)]
    assert with_default_recipe(["fit", "--config", "x.yaml"]) == ["fit", "--config", "x.yaml"]
    assert with_default_recipe(["validate"]) == ["validate"]


def test_wrong_type_names_the_key():
    """From Python the parser raises (no usage dump, no exit); the CLI turns it into one line."""
    from jsonargparse import ArgumentError

    from lightning_redllm.cli.config_errors import explain_parser_error

    args = ["fit", "--config", str(QUICKSTART), "--model.init_args.lr", "fast"]
    with pytest.raises(ArgumentError) as info:
        RedLLMCLI(args=args[1:], run=False)
    err = explain_parser_error(str(info.value), args)
    assert str(err) == "--model.init_args.lr: expected float, got 'fast'" and "--help" in err.hint


def test_vocab_mismatch_names_both_sizes():
    with pytest.raises(ValueError, match="32000.*4096|4096.*32000"):
        RedLLMCLI(args=["--config", str(QUICKSTART), "--model.init_args.tokenizer", "mistral-v1-32k"], run=False)
