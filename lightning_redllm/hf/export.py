"""``python -m lightning_redllm export --ckpt X --format hf --out DIR``: a standard ``transformers`` folder.

``DIR`` gets ``config.json`` (``model_type``, ``architectures``, ``auto_map``), the weights
(``model.safetensors``, sharded with an index above ``max_shard_size``), ``generation_config.json``
(bos/eos/pad, greedy), the tokenizer files ``AutoTokenizer`` loads offline, a ``README.md`` model card
and -- for this package's architectures -- the modelling code (``configuration_lightning_redllm.py``,
``modeling_lightning_redllm.py``, from ``templates/``), so ``AutoModelForCausalLM`` (DecLLM) /
``AutoModelForSeq2SeqLM`` (RedLLM) ``.from_pretrained(DIR, trust_remote_code=True)`` work with no
network and without lightning_redllm. A DecLLM without attention normalizations is a Llama and is
written as a native ``LlamaForCausalLM`` (no custom code).

Tokenizers: a ``tokenizer.json`` (HF tokenizers) is copied byte for byte and declared as
``PreTrainedTokenizerFast``; a SentencePiece ``.model`` becomes ``tokenizer.model`` with
``LlamaTokenizer``. DecLLM's tokenizer adds ``bos`` (every DecLLM sequence starts with it, as in
training); RedLLM's declares no bos token (like T5's): ``bos`` is the decoder start token
(``decoder_start_token_id``) and the encoder reads the text alone, padded on the right.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ..config import ModelConfig
from ..tokenizer import Tokenizer, load_tokenizer
from .convert import CONFIG_FILE, EXTRAS_KEY, LLAMA_TYPE, MODELING_FILE, hf_config, model_type_of, to_llama_names
from .folder import CONFIG_NAME, is_hf_folder, read_config_json
from .weights import parse_size, save_weights

TEMPLATES = Path(__file__).resolve().parent / "templates"
CODE_FILES = (f"{CONFIG_FILE}.py", f"{MODELING_FILE}.py")
STUDY = "arXiv 2510.26622, \"Encoder-Decoder or Decoder-Only? Revisiting Encoder-Decoder LLM\""


def _dump(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def training_progress(ckpt: Union[str, Path]) -> dict[str, int]:
    """``global_step`` and ``tokens_seen`` recorded with a checkpoint (``.ckpt``, sharded folder or an
    exported folder); {} when the checkpoint does not say (a bare safetensors file)."""
    from ..reliability import load_torch_file

    path = Path(ckpt)
    try:
        if is_hf_folder(path):
            extra = read_config_json(path).get(EXTRAS_KEY) or {}
            return {k: int(extra[k]) for k in ("global_step", "tokens_seen") if k in extra}
        if path.is_file() and path.suffix != ".safetensors":
            meta = load_torch_file(path, weights_only=True, mmap=True)
        elif path.is_dir() and (path / "meta.pt").is_file():
            meta = load_torch_file(path / "meta.pt", weights_only=True)
        elif path.is_dir() and any(path.rglob("*model_states.pt")):
            meta = load_torch_file(sorted(path.rglob("*model_states.pt"))[0], weights_only=True, mmap=True)
        else:
            return {}
    except (OSError, ValueError):
        return {}
    out = {}
    if isinstance(meta.get("global_step"), int):
        out["global_step"] = meta["global_step"]
    tokens = (meta.get("module_counters") or {}).get("tokens_seen")
    if isinstance(tokens, int):
        out["tokens_seen"] = tokens
    return out


def tokenizer_files(tok: Tokenizer, folder: Path, cfg: ModelConfig) -> list[str]:
    """Write the tokenizer files ``AutoTokenizer.from_pretrained(folder)`` loads offline."""
    decllm = cfg.family == "decllm"
    piece = tok.id_to_piece
    special = {"eos_token": piece(tok.eos_id), "pad_token": piece(tok.pad_id), "unk_token": piece(tok.unk_id)}
    # RedLLM: no bos token -- the encoder reads the text alone and the decoder's start is the config's
    special = {"bos_token": piece(tok.bos_id) if decllm else None, **special}
    common = {**special, "add_bos_token": decllm, "add_eos_token": False, "model_max_length": cfg.max_seq_len,
              "padding_side": "left" if decllm else "right", "clean_up_tokenization_spaces": False}
    if tok.kind == "hf":
        data = json.loads(Path(tok.path).read_text(encoding="utf-8"))
        if decllm:  # transformers 5 takes add_bos from tokenizer.json's post-processor, not tokenizer_config
            data["post_processor"] = _with_bos(tok, data.get("post_processor"))
        _dump(folder / "tokenizer.json", data)
        files = ["tokenizer.json"]
        tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", **common}
    else:
        shutil.copyfile(tok.path, folder / "tokenizer.model")
        files = ["tokenizer.model"]
        tok_config = {"tokenizer_class": "LlamaTokenizer", "legacy": False, **common}
    for stale in {"tokenizer.json", "tokenizer.model"} - set(files):
        (folder / stale).unlink(missing_ok=True)
    _dump(folder / "tokenizer_config.json", tok_config)
    _dump(folder / "special_tokens_map.json", {k: v for k, v in special.items() if v is not None})
    return files + ["tokenizer_config.json", "special_tokens_map.json"]


def _with_bos(tok: Tokenizer, existing: Optional[dict]) -> dict:
    """A ``tokenizers`` post-processor that puts ``bos`` before every text (after ``existing``, if any)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import processors

    bos = tok.id_to_piece(tok.bos_id)
    template = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1",
                                             special_tokens=[(bos, tok.bos_id)])
    backend = HFTokenizer.from_file(str(tok.path))
    backend.post_processor = template
    built = json.loads(backend.to_str())["post_processor"]
    return {"type": "Sequence", "processors": [existing, built]} if existing else built


def model_card(cfg: ModelConfig, kind: str, n_params: int, progress: dict[str, int], source: str) -> str:
    family = "RedLLM (encoder-decoder)" if cfg.family == "redllm" else "DecLLM (decoder-only)"
    if cfg.bidirectional_prefix:
        family += " + BiAttn (bidirectional attention over the prompt)"
    auto = "AutoModelForSeq2SeqLM" if cfg.family == "redllm" else "AutoModelForCausalLM"
    remote = kind != LLAMA_TYPE
    steps = progress.get("global_step")
    tokens = progress.get("tokens_seen")
    training = (f"{steps:,} optimizer steps, {tokens:,} tokens" if steps is not None and tokens is not None
                else f"{steps:,} optimizer steps" if steps is not None else "not recorded in the checkpoint")
    load = f"{auto}.from_pretrained(path{', trust_remote_code=True' if remote else ''})"
    lines = [
        "---",
        "library_name: transformers",
        f"pipeline_tag: {'text2text-generation' if cfg.family == 'redllm' else 'text-generation'}",
        f"tags: [lightning_redllm, {cfg.family}]",
        "---",
        f"# {cfg.name or cfg.family}: {family}",
        "",
        f"Trained with lightning_redllm, a PyTorch Lightning toolkit reproducing {STUDY}.",
        "",
        "| | |", "|---|---|",
        f"| family | {family} |",
        f"| preset | {cfg.name or '(custom)'} |",
        f"| parameters | {n_params:,} ({n_params / 1e6:.2f}M) |",
        f"| training | {training} |",
        "| layers | " + (f"{cfg.n_encoder_layers} encoder + {cfg.n_decoder_layers} decoder" if cfg.family == "redllm"
                         else f"{cfg.n_layers}") + " |",
        f"| width / heads / head dim | {cfg.d_model} / {cfg.n_heads} (kv {cfg.n_kv_heads}) / {cfg.head_dim} |",
        f"| context (trained) | {cfg.max_seq_len} tokens |",
        f"| architecture | {'native Llama' if not remote else 'custom code in this folder (trust_remote_code=True)'} |",
        f"| exported from | `{Path(source).name}` |",
        "",
        "```python",
        f"from transformers import AutoTokenizer, {auto}",
        "path = \".\"  # this folder",
        f"tok = AutoTokenizer.from_pretrained(path{', trust_remote_code=True' if remote else ''})",
        f"model = {load}",
    ]
    if cfg.family == "redllm":
        lines += ["batch = tok([\"In the beginning\"], return_tensors=\"pt\")  # the encoder input, right-padded",
                  "out = model.generate(**batch, max_new_tokens=32)       # the decoder starts from <s>"]
    else:
        lines += ["batch = tok([\"In the beginning\"], return_tensors=\"pt\")  # <s> + text, left-padded",
                  "out = model.generate(**batch, max_new_tokens=32)"]
    lines += ["print(tok.batch_decode(out, skip_special_tokens=True))", "```", ""]
    if cfg.bidirectional_prefix:
        lines += ["DecLLM + BiAttn: `generate()` attends the whole prompt (bos + text) bidirectionally, as in "
                  "instruction tuning; a forward pass does so for the first `prefix_lengths[b]` real tokens of "
                  "row `b` when given `prefix_lengths=` (B,) and is causal without it.", ""]
    if cfg.family == "redllm":
        lines += ["RoPE positions are continuous: decoder tokens continue after each example's encoder length "
                  "(taken from `attention_mask`), in self- and cross-attention.", ""]
    return "\n".join(lines)


def export_hf(ckpt: Union[str, Path], out: Union[str, Path], *, tokenizer: Optional[str] = None,
              max_shard_size: Union[int, str] = "5GB", native_llama: bool = True) -> Path:
    """Write the ``transformers`` folder ``out`` for checkpoint ``ckpt`` (any kind ``read_checkpoint``
    reads); ``tokenizer`` defaults to the one the checkpoint records. Returns ``out``."""
    from ..models import build_model
    from ..modules.checkpoint import check_compatible, read_checkpoint

    parse_size(max_shard_size)  # a bad size fails before anything is read or written
    src = read_checkpoint(ckpt)
    if src.config is None:
        raise ValueError(f"{ckpt} holds no model config; export it with `python -m lightning_redllm export` first")
    cfg = ModelConfig.from_dict(src.config)
    hparams = src.hparams or {}
    if cfg.family == "decllm" and hparams.get("bidirectional_prefix"):
        cfg.bidirectional_prefix = True  # checkpoints written before the config recorded it
    with torch.device("meta"):
        check_compatible(cfg, src.config, src.state, build_model(cfg), ckpt)
    tok_name = tokenizer or hparams.get("tokenizer")
    if tok_name is None:
        raise ValueError(f"no tokenizer recorded in {ckpt}; pass --tokenizer")
    tok = load_tokenizer(tok_name)
    tok.check_fits(cfg.vocab_size)

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    kind = model_type_of(cfg, native_llama)
    state = src.state
    dtypes = {v.dtype for v in state.values()}
    if len(dtypes) != 1:
        raise ValueError(f"{ckpt} mixes parameter dtypes {sorted(map(str, dtypes))}; export needs one")
    dtype = str(dtypes.pop()).removeprefix("torch.")
    progress = training_progress(ckpt)
    config = hf_config(cfg, bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id, dtype=dtype,
                       native_llama=native_llama, extras=progress)

    save_weights(to_llama_names(state) if kind == LLAMA_TYPE else state, out, max_shard_size)
    _dump(out / CONFIG_NAME, config)
    gen = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id, "do_sample": False}
    if cfg.family == "redllm":
        gen["decoder_start_token_id"] = tok.bos_id
    _dump(out / "generation_config.json", gen)
    tokenizer_files(tok, out, cfg)
    for name in CODE_FILES:
        if kind == LLAMA_TYPE:
            (out / name).unlink(missing_ok=True)
        else:
            shutil.copyfile(TEMPLATES / name, out / name)
    n_params = sum(v.numel() for v in state.values())
    (out / "README.md").write_text(model_card(cfg, kind, n_params, progress, str(ckpt)), encoding="utf-8")
    return out


def export_main_hf(parser, args) -> int:
    """``export --format hf`` (``args``: the export subcommand's parsed flags); user errors in one line."""
    import sys

    try:
        out = export_hf(args.ckpt, args.out, tokenizer=args.tokenizer, max_shard_size=args.max_shard_size)
    except (ValueError, OSError) as err:
        text = " ".join(str(err).split())
        print(f"{parser.prog}: error: {'--' if text.startswith('max_shard_size') else ''}{text}", file=sys.stderr)
        return 2
    config = json.loads((out / CONFIG_NAME).read_text())
    shards = len(list(out.glob("model*.safetensors")))
    code = "custom code" if (out / CODE_FILES[1]).is_file() else "no custom code"
    print(f"wrote {out}/ ({config['architectures'][0]}, {code}, weights in {shards} safetensors file"
          f"{'s' if shards > 1 else ''})")
    return 0


__all__ = ["export_main_hf", "export_hf", "training_progress", "tokenizer_files", "model_card"]
