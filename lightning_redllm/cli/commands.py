"""Subcommands beyond Lightning's: ``generate`` and ``export``.

Each takes its own argv (argparse) so ``python -m lightning_redllm generate --help`` documents it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import torch

from ..generate import SamplingOptions, generate_text
from ..generate.load import load_for_inference  # noqa: F401  (also re-exported: users and tests import it here)
from ..modules.checkpoint import model_from_checkpoint, save_safetensors
from ..scale.plan import plan_main
from .output import print_and_save


def generate_main(argv: Sequence[str]) -> int:
    import warnings

    from ..generate import ContextLengthWarning, ProgressPrinter

    p = argparse.ArgumentParser(prog="python -m lightning_redllm generate",
                                description="Generate text from a checkpoint (RedLLM or DecLLM).")
    p.add_argument("--ckpt", required=True, help="Lightning .ckpt or exported .safetensors")
    p.add_argument("--prompt", action="append", required=True, help="prompt text; repeat for a batch")
    p.add_argument("--tokenizer", default=None, help="tokenizer path/name (default: the one the run used)")
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top_k", type=int, default=None)
    p.add_argument("--top_p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no_cache", action="store_true", help="recompute every step (slow; for checking)")
    p.add_argument("--compile", action="store_true",
                   help="static KV cache + compiled one-token step (CUDA graphs on a GPU); pays a compilation first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of text")
    p.add_argument("--progress_every", type=int, default=256, metavar="N",
                   help="print progress to stderr every N new tokens (and every 10 s); 0 = never")
    a = p.parse_args(list(argv))
    # options are checked before the checkpoint is read; any user error ends in one line, not a traceback
    try:
        opts = SamplingOptions(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k,
                               top_p=a.top_p, seed=a.seed)
        for i, prompt in enumerate(a.prompt):
            if not prompt.strip():
                raise ValueError(f"--prompt number {i + 1} is empty")
        if a.compile and a.no_cache:
            raise ValueError("--compile decodes with a static KV cache; it cannot be combined with --no_cache")
        if a.progress_every < 0:
            raise ValueError(f"--progress_every must be >= 0, got {a.progress_every}")
        if not Path(a.ckpt).exists():  # before read_checkpoint, whose message speaks of init_from
            raise ValueError(f"checkpoint not found: {a.ckpt}")
        model, tok, _ = load_for_inference(a.ckpt, a.tokenizer, a.device)
        default_show = warnings.showwarning

        def show(message, category, *args, **kwargs):
            # past the trained context: say so at once, in one line, before the long wait
            if issubclass(category, ContextLengthWarning):
                print(f"{p.prog}: warning: {message}", file=sys.stderr, flush=True)
            else:
                default_show(message, category, *args, **kwargs)

        with warnings.catch_warnings():
            warnings.simplefilter("always", ContextLengthWarning)
            warnings.showwarning = show
            progress = None
            if a.progress_every:
                progress = ProgressPrinter(opts.max_new_tokens, prefix=p.prog, every=a.progress_every)
            outs = generate_text(model, tok, a.prompt, options=opts, use_cache=not a.no_cache, progress=progress,
                                 compile=a.compile)
    except (ValueError, OSError) as err:
        print(f"{p.prog}: error: {_as_option(err)}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps([{"prompt": pr, "output": o} for pr, o in zip(a.prompt, outs)], ensure_ascii=False))
    else:
        for pr, o in zip(a.prompt, outs):
            print(f">>> {pr}\n{o}\n")
    return 0


def _as_option(err: BaseException) -> str:
    """One line; SamplingOptions names fields (``top_p must be ...``), the CLI flags carry ``--``."""
    text = " ".join(str(err).split())
    for name in ("max_new_tokens", "temperature", "top_k", "top_p"):
        if text.startswith(f"{name} "):
            return f"--{text}"
    return text


def export_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m lightning_redllm export",
                                description="Write a checkpoint's model weights (+config) as one safetensors file.")
    p.add_argument("--ckpt", required=True, help="Lightning .ckpt file or DeepSpeed checkpoint directory")
    p.add_argument("--out", required=True, help="output .safetensors path (--format hf: output folder)")
    p.add_argument("--format", choices=("safetensors", "hf"), default="safetensors",
                   help="hf: a transformers folder (AutoModelFor*.from_pretrained, lm_eval --model hf, the Hub)")
    p.add_argument("--max_shard_size", default="5GB", help="--format hf: weight files above this are sharded")
    p.add_argument("--tokenizer", default=None, help="--format hf: tokenizer to ship (default: the run's)")
    a = p.parse_args(list(argv))
    if a.format == "hf":
        from ..hf.export import export_main_hf

        return export_main_hf(p, a)
    model, cfg, hparams = model_from_checkpoint(a.ckpt)
    out = save_safetensors(model, cfg, a.out, tokenizer=hparams.get("tokenizer"))
    print(f"wrote {out} ({model.num_parameters() / 1e6:.2f}M parameters, {cfg.family})")
    return 0


def evaluate_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m lightning_redllm evaluate",
                                description="Held-out perplexity per source, at one or several sequence lengths "
                                            "(lengths past the training length measure extrapolation); with "
                                            "--tasks, lm-evaluation-harness tasks instead (needs the eval extra).")
    p.add_argument("--ckpt", required=True, help="Lightning .ckpt or exported .safetensors")
    p.add_argument("--shards", default=None, help="pretraining shard pattern (default: the bundled validation shards)")
    p.add_argument("--lengths", default=None, help="comma-separated sequence lengths, e.g. 256,512,1024 (default 256)")
    p.add_argument("--prefix_len", type=int, default=None, help="RedLLM encoder tokens (default: half of each length)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_sequences", type=int, default=None, help="per source and length (0 = all; default 64)")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    lm = p.add_argument_group("lm-eval tasks (instead of the perplexity mode)")
    lm.add_argument("--tasks", default=None,
                    help="comma-separated lm-eval task names: the bundled bundled_continuation_mc, "
                         "bundled_heldout_ppl, bundled_next_word (tag lightning_redllm_bundled), any task "
                         "lm-eval knows, or tasks under --include_path")
    lm.add_argument("--num_fewshot", type=int, default=0, help="in-context examples per prompt (default 0)")
    lm.add_argument("--limit", type=int, default=None, help="at most N examples per task")
    lm.add_argument("--include_path", default=None, help="extra folder of lm-eval task YAML files")
    a = p.parse_args(list(argv))
    if a.tasks is not None:  # lm-eval mode: lightning_redllm/cli/lm_eval.py (imports lm-eval only now)
        from .lm_eval import evaluate_tasks

        return evaluate_tasks(p, a)
    for flag in ("num_fewshot", "limit", "include_path"):
        if getattr(a, flag) != p.get_default(flag):
            print(f"{p.prog}: error: --{flag} needs --tasks (lm-eval mode)", file=sys.stderr)
            return 2
    from ..data.shards import bundled_shards
    from ..eval import evaluate_perplexity, format_table

    try:
        lengths = [int(x) for x in (a.lengths or "256").split(",") if x.strip()]
    except ValueError:
        p.error(f"--lengths must be comma-separated integers, got {a.lengths!r}")
    max_sequences = 64 if a.max_sequences is None else a.max_sequences
    model, tok, cfg = load_for_inference(a.ckpt, a.tokenizer, a.device)
    shards = a.shards or bundled_shards("pretrain", "val")
    res = evaluate_perplexity(model, shards, bos_id=tok.bos_id, lengths=lengths, batch_size=a.batch_size,
                              max_sequences=max_sequences or None, prefix_len=a.prefix_len,
                              tokenizer_fingerprint=tok.fingerprint)
    res.update({"ckpt": str(a.ckpt), "family": cfg.family, "shards": str(shards)})
    print_and_save(format_table(res), res, a.out)
    return 0


def recipes_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m lightning_redllm recipes",
                                description="List the recipes shipped with the package; pass any of them to "
                                            "--config by name (e.g. --config stage/pretrain) from any directory.")
    p.add_argument("name", nargs="?", help="print this recipe's YAML instead of the list")
    a = p.parse_args(list(argv))
    from ..assets.recipes import RECIPES, list_recipes, resolve_recipe

    if a.name:
        print(Path(resolve_recipe(a.name)).read_text(), end="")
        return 0
    print(f"recipes in {RECIPES}:")
    for name in list_recipes():
        print(f"  {name}")
    return 0


COMMANDS = {
    "generate": (generate_main, "generate text from a checkpoint"),
    "export": (export_main, "consolidate a checkpoint into one safetensors file"),
    "evaluate": (evaluate_main, "held-out perplexity per source and length (extrapolation)"),
    "recipes": (recipes_main, "list the packaged recipes (usable by name with --config)"),
    "plan": (plan_main, "per-GPU memory plan: states, activations, largest micro-batch that fits"),
    # imported only when run (their modules pull in numpy / plotting code the other subcommands never need)
    "extrapolate": (lambda argv: __import__("lightning_redllm.eval.extrapolation", fromlist=["_"]).extrapolate_main(argv),
                    "perplexity vs context length past the training length, several prefix lengths (JSON + PNG)"),
    "efficiency": (lambda argv: __import__("lightning_redllm.eval.efficiency", fromlist=["_"]).efficiency_main(argv),
                   "inference cost per preset/family: prefill, decode latency, tokens/s, KV cache, FLOPs"),
    "scaling": (lambda argv: __import__("lightning_redllm.eval.scaling", fromlist=["_"]).scaling_main(argv),
                "fit loss = a * C^-b vs training FLOPs and parameters from finished runs (JSON + PNG)"),
    "report": (lambda argv: __import__("lightning_redllm.study.report", fromlist=["_"]).report_main(argv),
               "gather the runs, evaluations and plots under a folder into one markdown page"),
    "study": (lambda argv: __import__("lightning_redllm.study", fromlist=["_"]).study_main(argv),
              "run a RedLLM-vs-DecLLM study end to end (e.g. --config recipes/study/cpu-mini.yaml); resumable"),
}

