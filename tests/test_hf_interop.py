"""Hugging Face interop (issue 20): ``export --format hf`` folders load in ``transformers`` offline and
compute what this package computes (logits within fp32 rounding on padded ragged batches, greedy
``generate()`` tokens identical, cached and not), stand alone without lightning_redllm, read back for
generate / evaluate / init_from byte-identically, refuse other architectures in one line, and score the
bundled lm-eval tasks through lm-eval's own ``hf`` backend exactly as this package's adapter does."""
from __future__ import annotations

import ast
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer  # noqa: E402

from lightning_redllm.config import ModelConfig  # noqa: E402
from lightning_redllm.generate import SamplingOptions, generate  # noqa: E402
from lightning_redllm.hf import export_hf, read_hf_folder  # noqa: E402
from lightning_redllm.hf.export import CODE_FILES, TEMPLATES  # noqa: E402
from lightning_redllm.models import build_model  # noqa: E402
from lightning_redllm.modules.checkpoint import read_checkpoint, save_safetensors  # noqa: E402
from lightning_redllm.tokenizer import load_tokenizer  # noqa: E402

HERE = Path(__file__).resolve().parent
#: fp32 (eps 1.2e-7) through a few layers of a tiny model, |logits| ~ 1: ~100 ulps, the bound
#: tests/test_models.py holds the models to against the fp64 reference
FP32 = dict(atol=1e-5, rtol=1e-5)
#: four kinds: the two families, DecLLM + BiAttn, and a DecLLM with no attention norms (= Llama)
KINDS = {
    "decllm": dict(family="decllm"),
    "redllm": dict(family="redllm"),
    "biattn": dict(family="decllm", bidirectional_prefix=True),
    "llama": dict(family="decllm", qkv_norm=False),
}
TEXTS = ["In the beginning God created the heaven", "Hacker slang:", "The assignment statement binds names to objects"]
NEW = 10


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matmuls: one intra-op thread is as fast alone and much faster on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("bundled-bpe-4k")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """kind -> (our model in eval mode, its safetensors file, its exported folder)."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for i, (kind, spec) in enumerate(KINDS.items()):
        torch.manual_seed(10 + i)
        extra = {k: v for k, v in spec.items() if k != "family"}
        # init_std 0.1: peaked logits, so greedy continuations vary instead of repeating one token
        cfg = ModelConfig.from_name(f"{spec['family']}-tiny", init_std=0.1, **extra)
        model = build_model(cfg)
        model.init_weights()
        src = save_safetensors(model, cfg, root / f"{kind}.safetensors", tokenizer="bundled-bpe-4k")
        out[kind] = (model.eval(), src, export_hf(src, root / kind))
    return out


def _load(folder: Path, family: str, **kw):
    cls = AutoModelForCausalLM if family == "decllm" else AutoModelForSeq2SeqLM
    return cls.from_pretrained(folder, **kw).eval()


def _prompts(tok) -> list[list[int]]:
    return [tok.encode(t) for t in TEXTS]  # ragged: 7, 4 and 9 tokens


def _cut(rows, eos):
    return [r[: r.index(eos)] if eos in r else r for r in rows]


def _left_padded(prompts, bos, pad):
    """(ids, bool mask) of bos + prompt rows, padded on the left."""
    n = max(len(p) for p in prompts) + 1
    ids = torch.tensor([[pad] * (n - 1 - len(p)) + [bos] + p for p in prompts])
    mask = torch.tensor([[False] * (n - 1 - len(p)) + [True] * (len(p) + 1) for p in prompts])
    return ids, mask


def _hf_greedy_decllm(hf, ids, mask, eos, **kw):
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=mask.long(), max_new_tokens=NEW, do_sample=False,
                          eos_token_id=eos, pad_token_id=0, **kw)
    return _cut(out[:, ids.shape[1]:].tolist(), eos)


# --------------------------------------------------------------------------- DecLLM, BiAttn, Llama
@pytest.mark.parametrize("kind", ["decllm", "biattn", "llama"])
def test_decllm_logits_and_greedy_generate_match_ours(exported, tok, kind):
    model, _, folder = exported[kind]
    if kind == "llama":  # native: no custom code in the folder, no trust_remote_code needed
        assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"
        assert not any((folder / f).exists() for f in CODE_FILES)
        hf = _load(folder, "decllm")
        assert type(hf).__name__ == "LlamaForCausalLM" and type(hf).__module__.startswith("transformers.models.llama")
    else:
        hf = _load(folder, "decllm", trust_remote_code=True)
    prompts = _prompts(tok)
    ids, mask = _left_padded(prompts, tok.bos_id, tok.pad_id)
    prefix = mask.sum(-1) if kind == "biattn" else None  # bos + prompt, counted from the first real token
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, prefix_lengths=prefix).logits
        extra = {"prefix_lengths": prefix} if prefix is not None else {}
        theirs = hf(input_ids=ids, attention_mask=mask.long(), **extra).logits
    torch.testing.assert_close(theirs[mask], ours[mask], **FP32)
    for i, p in enumerate(prompts):  # each row as computed alone, without padding
        with torch.no_grad():
            alone = model(torch.tensor([[tok.bos_id] + p]),
                          prefix_lengths=torch.tensor([len(p) + 1]) if prefix is not None else None).logits[0]
        torch.testing.assert_close(theirs[i][mask[i]], alone, **FP32)
    if kind == "biattn":  # the prefix is live: a causal forward of the same batch differs
        with torch.no_grad():
            causal = hf(input_ids=ids, attention_mask=mask.long()).logits
        assert (causal[mask] - theirs[mask]).abs().max() > 1e-3

    want = generate(model, prompts, bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id,
                    options=SamplingOptions(max_new_tokens=NEW))
    assert len({tuple(w) for w in want}) == 3 and len({t for w in want for t in w}) > 6, want  # not degenerate
    for use_cache in (True, False):
        assert _hf_greedy_decllm(hf, ids, mask, tok.eos_id, use_cache=use_cache) == want
    # an eos met mid-way (one of row 0's tokens): that row stops, the others go on, in both
    eos = want[0][4]
    early = generate(model, prompts, bos_id=tok.bos_id, eos_id=eos, pad_id=tok.pad_id,
                     options=SamplingOptions(max_new_tokens=NEW))
    assert len(early[0]) <= 4 and _hf_greedy_decllm(hf, ids, mask, eos) == early
    if kind == "biattn":  # generate() attends the prompt bidirectionally by default: its first scores are ours
        with torch.no_grad():
            out = hf.generate(input_ids=ids, attention_mask=mask.long(), max_new_tokens=1, do_sample=False,
                              output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        torch.testing.assert_close(out.logits[0], ours[:, -1], **FP32)


def test_decllm_labels_give_the_causal_lm_loss(exported, tok):
    model, _, folder = exported["decllm"]
    hf = _load(folder, "decllm", trust_remote_code=True)
    ids = torch.tensor([[tok.bos_id] + tok.encode(TEXTS[2])])
    labels = ids.clone()
    labels[0, :3] = -100
    with torch.no_grad():
        loss = hf(input_ids=ids, labels=labels).loss
        ours = model(ids[:, :-1], labels[:, 1:]).nll
    torch.testing.assert_close(loss, ours, **FP32)


# --------------------------------------------------------------------------- RedLLM
def test_redllm_logits_and_greedy_generate_match_ours(exported, tok):
    model, _, folder = exported["redllm"]
    hf = _load(folder, "redllm", trust_remote_code=True)
    prompts = _prompts(tok)
    s = max(map(len, prompts))
    enc = torch.tensor([p + [tok.pad_id] * (s - len(p)) for p in prompts])  # right padding
    lengths = torch.tensor([len(p) for p in prompts])
    emask = torch.arange(s) < lengths.view(-1, 1)
    dec = torch.tensor([[tok.bos_id] + tok.encode(" and the earth")] * 3)
    labels = torch.cat([dec[:, 1:], torch.full((3, 1), tok.eos_id)], dim=1)
    with torch.no_grad():
        ours = model(enc, dec, encoder_lengths=lengths).logits
        out = hf(input_ids=enc, attention_mask=emask.long(), labels=labels)  # decoder inputs = labels shifted right
    torch.testing.assert_close(out.logits, ours, **FP32)
    ref = torch.nn.functional.cross_entropy(ours.reshape(-1, ours.shape[-1]), labels.reshape(-1))
    torch.testing.assert_close(out.loss, ref, **FP32)
    for i, p in enumerate(prompts):  # the decoder logit does not move when the encoder input is padded
        with torch.no_grad():
            alone = model(torch.tensor([p]), dec[:1]).logits[0]
        torch.testing.assert_close(out.logits[i], alone, **FP32)

    want = generate(model, prompts, bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id,
                    options=SamplingOptions(max_new_tokens=NEW))
    assert len({tuple(w) for w in want}) == 3 and len({t for w in want for t in w}) > 6, want
    for eos, expect in ((tok.eos_id, want), (want[1][3], None)):
        if expect is None:  # an eos met mid-way by row 1
            expect = generate(model, prompts, bos_id=tok.bos_id, eos_id=eos, pad_id=tok.pad_id,
                              options=SamplingOptions(max_new_tokens=NEW))
            assert len(expect[1]) <= 3
        for use_cache in (True, False):
            with torch.no_grad():
                gen = hf.generate(input_ids=enc, attention_mask=emask.long(), max_new_tokens=NEW, do_sample=False,
                                  eos_token_id=eos, use_cache=use_cache)
            assert gen[:, 0].eq(tok.bos_id).all()  # the decoder starts from bos
            assert _cut(gen[:, 1:].tolist(), eos) == expect


# --------------------------------------------------------------------------- tokenizer, stand-alone folder
def _validation_texts() -> list[str]:
    import zstandard

    from lightning_redllm.assets import asset_path

    files = sorted(asset_path("corpus", "redpajama").glob("*/val-*.jsonl.zst"))
    files.append(asset_path("corpus", "flan", "val.jsonl.zst"))
    texts = []
    for path in files:
        with open(path, "rb") as f:
            for line in io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(f), encoding="utf-8"):
                doc = json.loads(line)
                texts += [doc["text"]] if "text" in doc else [doc["inputs"], doc["targets"]]
    return texts


@pytest.mark.parametrize("kind", ["decllm", "redllm", "llama"])
def test_auto_tokenizer_gives_our_ids_offline(exported, tok, kind):
    folder = exported[kind][2]
    # transformers 5 reads config.json before the tokenizer files: a custom-code folder asks for trust
    hf_tok = AutoTokenizer.from_pretrained(folder, **({} if kind == "llama" else {"trust_remote_code": True}))
    texts = _validation_texts()
    assert len(texts) > 200
    ours = tok.encode_batch(texts)
    assert hf_tok(texts, add_special_tokens=False)["input_ids"] == ours
    bos = [tok.bos_id] if kind != "redllm" else []  # DecLLM reads bos + text; RedLLM's encoder the text alone
    assert hf_tok(texts[:20])["input_ids"] == [bos + o for o in ours[:20]]
    assert hf_tok.batch_decode(ours, skip_special_tokens=True) == [tok.decode(o) for o in ours]
    assert hf_tok.padding_side == ("right" if kind == "redllm" else "left")
    assert (hf_tok.eos_token_id, hf_tok.pad_token_id) == (tok.eos_id, tok.pad_id)


def test_the_folder_stands_alone_without_lightning_redllm(exported, tok, tmp_path):
    for name in CODE_FILES:  # the modelling code imports transformers and torch, never this package
        tree = ast.parse((TEMPLATES / name).read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not any(m.startswith("lightning_redllm") for m in imported), imported
    jobs, want = [], []
    for kind in ("decllm", "redllm"):
        model, _, folder = exported[kind]
        copy = shutil.copytree(folder, tmp_path / f"alone-{kind}")  # nothing outside the folder is needed
        prompts = _prompts(tok)
        jobs.append({"dir": str(copy), "family": kind, "prompts": prompts, "max_new_tokens": NEW, "text": TEXTS[0]})
        want.append((generate(model, prompts, bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id,
                              options=SamplingOptions(max_new_tokens=NEW)),
                     ([tok.bos_id] if kind == "decllm" else []) + tok.encode(TEXTS[0])))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"),
               OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(HERE / "data" / "hf_standalone.py"), json.dumps(jobs)], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    for res, (tokens, text_ids), kind in zip(got, want, ("decllm", "redllm")):
        assert res["tokens"] == tokens and res["text_ids"] == text_ids, kind
        assert res["module"].startswith("transformers_modules.") and "modeling_lightning_redllm" in res["module"]
        assert res["padding_side"] == ("left" if kind == "decllm" else "right")


# --------------------------------------------------------------------------- files, shards, round trip
def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "README.md"}


@pytest.mark.parametrize("kind", ["decllm", "redllm", "llama"])
def test_round_trip_is_byte_identical_and_shards_above_the_size(exported, kind, tmp_path):
    model, src, folder = exported[kind]
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "README.md"} <= files
    config = json.loads((folder / "config.json").read_text())
    if kind != "llama":
        auto = "AutoModelForSeq2SeqLM" if kind == "redllm" else "AutoModelForCausalLM"
        assert set(config["auto_map"]) == {"AutoConfig", auto} and set(CODE_FILES) <= files
    assert json.loads((folder / "generation_config.json").read_text())["do_sample"] is False
    card = (folder / "README.md").read_text()
    assert f"{model.config.name}" in card and f"{model.num_parameters():,}" in card and "2510.26622" in card

    # import: the same weights under the same names, the same config
    state, cfg, hparams = read_hf_folder(folder)
    assert cfg == model.config.to_dict() and hparams["tokenizer"] == "bundled-bpe-4k"
    ref = read_checkpoint(src).state
    assert state.keys() == ref.keys() and all(torch.equal(state[k], ref[k]) for k in ref)
    # export -> import -> export: every file identical (the card names its source)
    again = export_hf(folder, tmp_path / "again")
    assert _files(again) == _files(folder)

    # above max_shard_size: shards + index, as save_pretrained; transformers and our reader load them
    sharded = export_hf(src, tmp_path / "sharded", max_shard_size="150KB")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(sharded.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 4 and not (sharded / "model.safetensors").exists()
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    for p in shards:  # only a shard holding one tensor bigger than the limit may pass it (+ the header)
        if sum(v == p.name for v in index["weight_map"].values()) > 1:
            assert p.stat().st_size < 150_000 + 8192, p.name
    state2, _, _ = read_hf_folder(sharded)
    assert all(torch.equal(state2[k], ref[k]) for k in ref) and state2.keys() == ref.keys()
    assert _files(export_hf(sharded, tmp_path / "sharded2", max_shard_size="150KB")) == _files(sharded)
    hf = _load(sharded, "redllm" if kind == "redllm" else "decllm", trust_remote_code=kind != "llama")
    theirs = {k: v for k, v in hf.state_dict().items()}
    emb = "model.embed_tokens.weight" if kind == "llama" else "embed.weight"
    assert torch.equal(theirs[emb], ref["embed.weight"])
    if kind == "llama":  # tied: the head is the embedding, not a copy loaded separately
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()


def test_export_cli_from_a_lightning_checkpoint_records_the_training(exported, tmp_path, capsys):
    from lightning_redllm.__main__ import main

    model = exported["redllm"][0]
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "model_config": model.config.to_dict(), "hyper_parameters": {"tokenizer": "bundled-bpe-4k"},
                "global_step": 7, "module_counters": {"tokens_seen": 14336}}, ckpt)
    assert main(["export", "--ckpt", str(ckpt), "--format", "hf", "--out", str(tmp_path / "out")]) == 0
    assert "LightningRedLLMForConditionalGeneration" in capsys.readouterr().out
    assert "7 optimizer steps, 14,336 tokens" in (tmp_path / "out" / "README.md").read_text()
    assert _files(tmp_path / "out").keys() == _files(exported["redllm"][2]).keys()
    extras = json.loads((tmp_path / "out" / "config.json").read_text())["lightning_redllm"]
    assert extras["global_step"] == 7 and extras["tokens_seen"] == 14336
    assert main(["export", "--ckpt", str(ckpt), "--format", "hf", "--out", str(tmp_path / "x"),
                 "--max_shard_size", "lots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max_shard_size" in err[0] and not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- import: generate, evaluate, init_from
def test_generate_and_evaluate_read_the_folder(exported, capsys):
    from lightning_redllm.__main__ import main

    _, src, folder = exported["redllm"]
    outs = []
    for ckpt in (src, folder):
        assert main(["generate", "--ckpt", str(ckpt), "--prompt", TEXTS[0], "--prompt", TEXTS[1], "--json",
                     "--max_new_tokens", "8", "--device", "cpu"]) == 0
        outs.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert outs[0] == outs[1]
    results = []
    for ckpt in (src, folder):
        assert main(["evaluate", "--ckpt", str(ckpt), "--lengths", "64", "--max_sequences", "2", "--batch_size", "2",
                     "--device", "cpu"]) == 0
        results.append(capsys.readouterr().out.replace(str(ckpt), "CKPT"))
    assert results[0] == results[1] and "ppl" in results[0]


def test_init_from_the_folder_trains_like_init_from_the_checkpoint(exported, tmp_path):
    import lightning as L

    from lightning_redllm.data import PretrainDataModule
    from lightning_redllm.modules import DecLLMModule

    _, src, folder = exported["decllm"]
    losses = []
    for ckpt in (src, folder):
        L.seed_everything(0)
        m = DecLLMModule(preset="decllm-tiny", init_from=str(ckpt), overrides={"init_std": 0.1}, warmup_steps=1)
        seen = []

        class Record(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                seen.append(float(outputs["loss"]))

        L.Trainer(accelerator="cpu", devices=1, max_steps=2, default_root_dir=tmp_path, logger=False,
                  enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                  num_sanity_val_steps=0, limit_val_batches=0, callbacks=[Record()]).fit(
            m, datamodule=PretrainDataModule(seq_len=32, batch_size=2, num_workers=0))
        losses.append(seen)
    assert len(losses[0]) == 2 and losses[0] == losses[1]


# --------------------------------------------------------------------------- refusals
def _folder(root: Path, name: str, config: dict, weights: bool = True) -> Path:
    from safetensors.torch import save_file

    d = root / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    if weights:
        save_file({"x": torch.zeros(1)}, str(d / "model.safetensors"), metadata={"format": "pt"})
    return d


def test_other_architectures_are_refused_in_one_line_naming_the_key(exported, tmp_path, capsys):
    from lightning_redllm.__main__ import main

    llama = json.loads((exported["llama"][2] / "config.json").read_text())
    cases = {
        "gpt2": ({"model_type": "gpt2", "n_embd": 64}, "model_type is 'gpt2'"),
        "untied": ({**llama, "tie_word_embeddings": False}, "tie_word_embeddings"),
        "gelu": ({**llama, "hidden_act": "gelu"}, "hidden_act"),
        "scaled": ({**llama, "rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_type is 'linear'"),
        "biased": ({**llama, "attention_bias": True}, "attention_bias"),
    }
    for name, (config, needle) in cases.items():
        d = _folder(tmp_path, name, config)
        assert main(["generate", "--ckpt", str(d), "--prompt", "x", "--device", "cpu"]) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and needle in err[0] and str(d) in err[0], (name, err)
    pickled = _folder(tmp_path, "pickled", llama, weights=False)
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    assert main(["generate", "--ckpt", str(pickled), "--prompt", "x", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pickle" in err[0] and "pytorch_model.bin" in err[0]
    # init_from a folder of another size: the differing key is named
    from lightning_redllm.modules import DecLLMModule

    m = DecLLMModule(preset="decllm-tiny", init_from=str(exported["decllm"][2]), overrides={"d_model": 64})
    with pytest.raises(ValueError, match=r"d_model: checkpoint 128 vs model 64"):
        m.configure_model()


# --------------------------------------------------------------------------- lm-eval's own hf backend
@pytest.mark.slow
def test_lm_eval_hf_backend_scores_like_our_adapter(exported, tok):
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")
    import lm_eval
    import lm_eval.models.huggingface  # noqa: F401  registers "hf"
    from lm_eval.api.instance import Instance

    from lightning_redllm.eval.lm_eval_adapter import (BUNDLED_TASKS_DIR, LightningRedLLMLM, _flatten_metrics,
                                                       task_manager)

    tasks = ["bundled_continuation_mc", "bundled_heldout_ppl"]
    tm = task_manager(tasks=tasks)

    def run(model, task_list, **kw):
        out = lm_eval.simple_evaluate(model=model, tasks=task_list, limit=6, task_manager=tm, bootstrap_iters=0,
                                      batch_size=4, **kw)
        return {t: _flatten_metrics(r) for t, r in out["results"].items()}

    for family in ("decllm", "redllm"):
        model, _, folder = exported[family]
        # rolling perplexity: lm-eval's hf backend predicts each document after one prefix token in windows of
        # max_length -- our adapter with prefix_len=0 (each bundled document fits one 512-token window)
        ours = run(LightningRedLLMLM(model=model, tokenizer=tok, batch_size=4, prefix_len=0), tasks)
        if family == "decllm":
            theirs = run("hf", tasks[:1], model_args=f"pretrained={folder},trust_remote_code=True", device="cpu")
            # lm-eval prefixes the rolling windows with bos itself: the tokenizer must not add a second one
            theirs |= run("hf", tasks[1:], model_args=f"pretrained={folder},trust_remote_code=True,add_bos_token=False",
                          device="cpu")
            args = dict(pretrained=str(folder), trust_remote_code=True)
        else:
            theirs = run("hf", tasks, model_args=f"pretrained={folder},backend=seq2seq,trust_remote_code=True",
                         device="cpu")
            args = dict(pretrained=str(folder), trust_remote_code=True, backend="seq2seq")
        mc, ppl = tasks
        assert theirs[mc]["acc"] == ours[mc]["acc"] and theirs[mc]["acc_norm"] == ours[mc]["acc_norm"], family
        for metric in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
            assert theirs[ppl][metric] == pytest.approx(ours[ppl][metric], rel=1e-5), (family, metric)
        # per request (accuracy can agree by chance): every choice's log-likelihood agrees
        hflm = lm_eval.models.huggingface.HFLM(batch_size=4, device="cpu", **args)
        docs = [json.loads(line) for line in open(BUNDLED_TASKS_DIR / f"{mc}.test.jsonl", encoding="utf-8")][:4]
        reqs = [Instance("loglikelihood", {}, (d["context"], " " + c), i)
                for d in docs for i, c in enumerate(d["choices"])]
        mine = LightningRedLLMLM(model=model, tokenizer=tok, batch_size=4).loglikelihood(reqs, disable_tqdm=True)
        got = hflm.loglikelihood(reqs, disable_tqdm=True)
        torch.testing.assert_close(torch.tensor([g[0] for g in got], dtype=torch.float64),
                                   torch.tensor([m[0] for m in mine], dtype=torch.float64), atol=0, rtol=1e-5)
        assert [g[1] for g in got] == [m[1] for m in mine]


def test_llama_names_round_trip_every_decllm_parameter():
    """One template list gives both rename directions: every parameter of a DecLLM maps to a distinct
    Llama name and back to itself; a name outside the list is refused, naming it."""
    from lightning_redllm.hf.convert import ArchitectureError, from_llama_names, to_llama_names

    model = build_model(ModelConfig.from_name("decllm-tiny", n_layers=3))
    names = {k: i for i, k in enumerate(model.state_dict()) if not k.startswith("rope.")}
    llama = to_llama_names(names)
    assert len(set(llama)) == len(names) and all(k.startswith("model.") for k in llama)
    assert "model.layers.2.post_attention_layernorm.weight" in llama and "model.layers.0.mlp.gate_proj.weight" in llama
    assert from_llama_names(llama, "x") == names
    with pytest.raises(ArchitectureError, match="layers.0.self_attn.x_proj.weight"):
        to_llama_names({"layers.0.self_attn.x_proj.weight": 0})
