"""``stream_weights``: the per-tensor checkpoint reader behind ``init_from`` under DeepSpeed ZeRO-3.

It must give exactly the tensors the whole-file reader gives, refuse what ``check_compatible`` refuses,
and never read the whole file into memory: safetensors through its memory map, a Lightning ``.ckpt``
through ``torch.load(mmap=True)``.
"""
from __future__ import annotations

import pytest
import torch

from lightning_redllm.config import ModelConfig
from lightning_redllm.models import build_model
from lightning_redllm.modules.checkpoint import check_compatible, read_checkpoint, save_safetensors, stream_weights

CFG = dict(d_model=32, n_heads=2, head_dim=16, ffn_dim=64, n_encoder_layers=1, n_decoder_layers=1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model(ModelConfig.from_name("redllm-tiny", **CFG))
    m.init_weights()
    return m


def _ckpt(model, path):
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "model_config": model.config.to_dict(), "optimizer_states": [{"big": torch.zeros(10)}]}, path)
    return path


@pytest.mark.parametrize("kind", ["safetensors", "ckpt"])
def test_stream_gives_the_same_tensors_as_the_whole_file_reader(model, kind, tmp_path):
    path = (save_safetensors(model, model.config, tmp_path / "w.safetensors") if kind == "safetensors"
            else _ckpt(model, tmp_path / "w.ckpt"))
    whole = read_checkpoint(path)
    with stream_weights(path) as src:
        assert src.config == whole.config == model.config.to_dict()
        assert sorted(src.shapes) == sorted(whole.state)
        assert all(src.shapes[k].device.type == "meta" and src.shapes[k].shape == v.shape for k, v in whole.state.items())
        check_compatible(model.config, src.config, src.shapes, model, path)  # accepts its own weights
        for k, v in whole.state.items():
            torch.testing.assert_close(src.get(k), v, rtol=0, atol=0)


def test_safetensors_stream_never_loads_the_whole_file(model, tmp_path, monkeypatch):
    import safetensors.torch

    path = save_safetensors(model, model.config, tmp_path / "w.safetensors")

    def refuse(*a, **k):
        raise AssertionError("stream_weights read the whole file")

    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(safetensors.torch, "load", refuse)
    with stream_weights(path) as src:
        torch.testing.assert_close(src.get("embed.weight"), model.embed.weight.detach(), rtol=0, atol=0)


def test_ckpt_stream_is_memory_mapped(model, tmp_path, monkeypatch):
    path = _ckpt(model, tmp_path / "w.ckpt")
    seen = {}
    real_load = torch.load

    def spy(*a, **k):
        seen.update(k)
        return real_load(*a, **k)

    monkeypatch.setattr(torch, "load", spy)
    with stream_weights(path) as src:
        src.get("embed.weight")
    assert seen.get("mmap") is True and seen.get("weights_only") is True


def test_stream_refuses_another_size_naming_the_file(model, tmp_path):
    other = build_model(ModelConfig.from_name("redllm-tiny", **{**CFG, "ffn_dim": 96}))
    path = save_safetensors(other, other.config, tmp_path / "other.safetensors")
    with stream_weights(path) as src, pytest.raises(ValueError, match="other.safetensors.*ffn_dim"):
        check_compatible(model.config, src.config, src.shapes, model, path)


def test_stream_names_a_corrupt_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="bad.safetensors"):
        with stream_weights(bad):
            pass
