"""Generation with invalid options: ``ValueError`` from the API; from the ``generate`` CLI a
non-zero exit and one line naming the option, checked before the checkpoint is read."""
from __future__ import annotations

import pytest
import torch
from fault_helpers import SMALL, run_main, tiny_module

from lightning_redllm.generate import SamplingOptions, generate_text

NAN = float("nan")


@pytest.mark.parametrize("kwargs, option", [
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_p": -0.1}, "top_p"), ({"top_p": NAN}, "top_p"),
    ({"temperature": -1.0}, "temperature"), ({"temperature": NAN}, "temperature"),
    ({"top_k": 0}, "top_k"), ({"max_new_tokens": 0}, "max_new_tokens"),
])
def test_sampling_options_reject_invalid_values(kwargs, option):
    with pytest.raises(ValueError, match=option):
        SamplingOptions(**kwargs)


def test_empty_prompts_are_rejected():
    m = tiny_module()
    m.configure_model()
    for prompts in ("", [""], ["ok", ""], []):
        with pytest.raises(ValueError, match="prompt"):
            generate_text(m.model, m.tokenizer, prompts, options=SamplingOptions(max_new_tokens=2))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    m = tiny_module(overrides=SMALL)
    m.configure_model()
    path = tmp_path_factory.mktemp("gen") / "tiny.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in m.model.state_dict().items()},
                "model_config": m.config.to_dict(), "hyper_parameters": {"tokenizer": "bundled-bpe-4k"}}, path)
    return path


@pytest.mark.parametrize("args, expected", [
    (["--top_p", "1.5"], "--top_p must be in (0, 1], got 1.5"),
    (["--top_p", "0"], "--top_p must be in (0, 1], got 0.0"),
    (["--temperature", "-0.5"], "--temperature must be >= 0, got -0.5"),
    (["--top_k", "0"], "--top_k must be a positive integer"),
    (["--prompt", ""], "--prompt number 2 is empty"),
    (["--prompt", "   "], "--prompt number 2 is empty"),
])
def test_generate_cli_names_the_bad_option_in_one_line(ckpt, capsys, args, expected):
    code, out, err = run_main(["generate", "--ckpt", str(ckpt), "--prompt", "hello", "--max_new_tokens", "2", *args],
                              capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], err
    assert lines[0].startswith("python -m lightning_redllm generate: error:")


def test_generate_cli_checks_options_before_reading_the_checkpoint(tmp_path, capsys):
    code, _, err = run_main(["generate", "--ckpt", str(tmp_path / "missing.ckpt"), "--prompt", "hi", "--top_p", "2"],
                            capsys)
    assert code == 2 and "--top_p" in err and "missing.ckpt" not in err
    code, _, err = run_main(["generate", "--ckpt", str(tmp_path / "missing.ckpt"), "--prompt", "hi"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "missing.ckpt" in err


def test_generate_cli_with_valid_options_works(ckpt, capsys):
    code, out, err = run_main(["generate", "--ckpt", str(ckpt), "--prompt", "hello", "--max_new_tokens", "2",
                               "--temperature", "0.7", "--top_p", "0.9", "--seed", "0", "--json"], capsys)
    assert code == 0, err
    assert '"prompt": "hello"' in out
