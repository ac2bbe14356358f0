"""EleutherAI lm-evaluation-harness adapter for RedLLM and DecLLM checkpoints.

:class:`LightningRedLLMLM` is an ``lm_eval.api.model.LM`` registered as ``"lightning_redllm"``
(model_args ``checkpoint=, tokenizer=, device=, batch_size=, max_length=, prefix_len=``);
:func:`run_lm_eval` runs tasks on a checkpoint (or a loaded model) and returns plain JSON.

How each family scores ``loglikelihood(context, continuation)`` -- the same tokens for both: the
pair is tokenized as ``encode(context + continuation)`` split after ``encode(context)`` (trailing
spaces of the context move to the continuation), so every model predicts the same target tokens:

* DecLLM: ``[bos] + context + continuation``, causal; the continuation tokens are scored.
* DecLLM + BiAttn (``config.bidirectional_prefix``): the same sequence with ``bos + context``
  attending bidirectionally (``prefix_lengths = 1 + len(context)``), as in its instruction tuning.
* RedLLM: the context goes into the encoder, the decoder reads ``[bos] + continuation[:-1]`` and
  predicts the continuation (decoder positions continue after the encoder's). An empty context
  becomes the one-token encoder input ``[eos]`` (a document boundary): the encoder needs a token.

Too long: context + continuation may take ``max_length`` positions (default: the model's trained
context, ``config.max_seq_len``); the context is cut from the left to fit -- the tokens nearest the
continuation stay. A continuation longer than ``max_length`` on its own is an error.

``loglikelihood_rolling`` (perplexity of whole documents): the document's tokens are predicted in
consecutive blocks of ``max_length - prefix_len`` tokens; each block is scored in a window made of
the up to ``prefix_len`` tokens before it (the last, shorter block gets more: the window is the
``max_length`` tokens ending with the block). The context tokens are what RedLLM's *encoder* sees
per window (``[eos]`` for the first block, which has none) and what DecLLM + BiAttn attends
bidirectionally; DecLLM reads them causally after its ``bos``. Every token is predicted exactly
once. ``prefix_len`` defaults to ``max_length // 2`` for RedLLM and DecLLM + BiAttn (their training
split) and to 0 for DecLLM (non-overlapping windows ``[bos] + tokens``, its training objective).

``generate_until``: :func:`lightning_redllm.generate.generate` (greedy unless the task asks for
sampling), ``max_gen_toks`` tokens (default 256) or eos, then the text is cut at the first stop
string. The prompt is cut from the left to ``max_length - max_gen_toks`` tokens (one less for
DecLLM's bos).

lm-eval is an optional dependency (``pip install 'lightning_redllm[eval]'``); this module is only
imported on demand, so ``import lightning_redllm`` works without it.
"""
from __future__ import annotations

import functools
import json
import logging
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

try:
    import lm_eval
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ModuleNotFoundError as _err:  # only a missing lm_eval; a broken install keeps its own error
    if not (_err.name or "").startswith("lm_eval"):
        raise
    raise ImportError("the lm-eval adapter needs the lm-eval package: pip install 'lightning_redllm[eval]'") from None

import torch
from tqdm.auto import tqdm

from ..assets import asset_path
from ..generate import SamplingOptions, generate
from ..models import DecLLM, LanguageModel, RedLLM
from ..tokenizer import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

#: Folder of the bundled offline tasks (YAML + jsonl built by ``data_pipelines/build_lm_eval_tasks.py``).
BUNDLED_TASKS_DIR = asset_path("lm_eval_tasks")
#: The bundled tasks: multiple choice, rolling perplexity, generation (exact match). The tag
#: ``lightning_redllm_bundled`` selects all three.
BUNDLED_TASKS = ["bundled_continuation_mc", "bundled_heldout_ppl", "bundled_next_word"]
DEFAULT_MAX_GEN_TOKS = 256
_LOGITS_CHUNK = 1024  # scored positions per log-softmax: bounds memory to chunk x vocab floats


@contextmanager
def _final_hidden(model: LanguageModel) -> Iterator[list]:
    """Capture the final-normed hidden states (B, T, C) that the tied head turns into logits, so
    only the scored positions are projected onto the vocabulary."""
    norm = model.decoder_norm if isinstance(model, RedLLM) else model.norm
    box: list = []
    handle = norm.register_forward_hook(lambda _m, _inp, out: box.append(out))
    try:
        yield box
    finally:
        handle.remove()


@register_model("lightning_redllm")
class LightningRedLLMLM(LM):
    """lm-eval ``LM`` over a RedLLM / DecLLM checkpoint (see the module docstring for the scoring).

    Args:
        checkpoint: Lightning ``.ckpt``, exported ``.safetensors`` or sharded checkpoint folder.
        tokenizer: tokenizer path or bundled name (default: the one the checkpoint records); a
            :class:`~lightning_redllm.tokenizer.Tokenizer` when ``model`` is given.
        device: where to load the checkpoint (default ``cpu``); a given ``model`` stays where it is.
        batch_size: sequences per forward pass.
        max_length: positions per scored sequence (default: ``config.max_seq_len``).
        prefix_len: context tokens per ``loglikelihood_rolling`` window (see the module docstring).
        model: an already-loaded ``DecLLM`` / ``RedLLM`` instead of ``checkpoint``.
    """

    def __init__(self, checkpoint: Optional[str] = None, tokenizer: Any = None, device: Optional[str] = None,
                 batch_size: int | str = 8, max_length: Optional[int] = None, prefix_len: Optional[int] = None,
                 model: Optional[LanguageModel] = None, max_batch_size: Optional[int] = None) -> None:
        super().__init__()
        if (checkpoint is None) == (model is None):
            raise ValueError("lightning_redllm lm-eval model: pass exactly one of checkpoint=PATH or model=")
        if model is None:
            from ..generate.load import load_for_inference

            if not Path(str(checkpoint)).exists():
                raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
            model, tok, _ = load_for_inference(str(checkpoint), tokenizer, device or "cpu")
        else:
            if tokenizer is None:
                raise ValueError("lightning_redllm lm-eval model: a given model needs its tokenizer=")
            tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
            tok.check_fits(model.config.vocab_size)
        if not isinstance(model, (DecLLM, RedLLM)):
            raise ValueError(f"lightning_redllm lm-eval model: expected a DecLLM or RedLLM, got {type(model).__name__}")
        self.model, self.tok, self.checkpoint = model, tok, None if checkpoint is None else str(checkpoint)
        self._device = model.embed.weight.device
        try:
            self._batch_size = int(batch_size)
        except (TypeError, ValueError):
            raise ValueError(f"batch_size must be a positive integer (no 'auto'), got {batch_size!r}") from None
        if self._batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self._max_length = int(max_length or model.config.max_seq_len)
        if self._max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length!r}")
        if prefix_len is None:
            prefix_len = self._max_length // 2 if self.family == "redllm" or self.bidirectional else 0
        if not 0 <= int(prefix_len) < self._max_length:
            raise ValueError(f"prefix_len must be in [0, max_length={self._max_length}), got {prefix_len}")
        self.prefix_len = int(prefix_len)
        self._warned: set[str] = set()

    # lm-eval passes --batch_size/--device next to model_args; model_args win instead of a TypeError
    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: Optional[dict] = None):
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: Optional[dict] = None):
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        if str(extra.get("device", "")).startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's CLI defaults --device to cuda; like its HF model, fall back to the CPU
            log.warning("lightning_redllm: device %s requested but CUDA is not available; using cpu", extra["device"])
            extra["device"] = "cpu"
        return cls(**arg_dict, **extra)

    # ------------------------------------------------------------------ properties
    @property
    def family(self) -> str:
        return self.model.config.family

    @property
    def bidirectional(self) -> bool:
        return self.family == "decllm" and bool(self.model.config.bidirectional_prefix)

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        return f"{self.tok.name}:{self.tok.fingerprint}"

    # ------------------------------------------------------------------ tokens
    def tok_encode(self, text: str) -> list[int]:
        return self.tok.encode(text)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids); the continuation's ids are the tail of the whole text's."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        if not context:
            return [], self.tok_encode(continuation)
        whole = self.tok_encode(context + continuation)
        ctx = self.tok_encode(context)
        return ctx, whole[len(ctx):]

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score_tokens(self, items: Sequence[tuple[Sequence[int], Sequence[int]]],
                     disable_tqdm: bool = True) -> list[tuple[float, bool]]:
        """(summed log-probability, all greedy) of each ``(context ids, target ids)`` item: the
        target predicted after the context, in the family's layout (module docstring). No
        truncation here; items are batched longest first and returned in the given order."""
        out: list[Optional[tuple[float, bool]]] = [None] * len(items)
        order = sorted(range(len(items)), key=lambda i: -(len(items[i][0]) + len(items[i][1])))
        was_training = self.model.training
        self.model.eval()
        try:
            starts = range(0, len(order), self.batch_size)
            for start in tqdm(starts, desc="lightning_redllm scoring", disable=disable_tqdm):
                idx = order[start:start + self.batch_size]
                for i, res in zip(idx, self._score_batch([items[i] for i in idx])):
                    out[i] = res
        finally:
            self.model.train(was_training)
        return out  # type: ignore[return-value]

    def _score_batch(self, batch: list[tuple[Sequence[int], Sequence[int]]]) -> list[tuple[float, bool]]:
        dev, pad, b = self._device, self.tok.pad_id, len(batch)
        targets = [list(t) for _, t in batch]
        if any(not t for t in targets):
            raise ValueError("score_tokens: every item needs at least one target token")
        rows, cols = [], []  # (row, position) of each scored hidden state, target order
        with _final_hidden(self.model) as hidden:
            if isinstance(self.model, RedLLM):
                enc = [list(c) or [self.tok.eos_id] for c, _ in batch]
                s, t = max(map(len, enc)), max(map(len, targets))
                enc_ids = torch.full((b, s), pad, dtype=torch.long)
                dec_ids = torch.full((b, t), pad, dtype=torch.long)
                for i, (e, tgt) in enumerate(zip(enc, targets)):  # right padding, lengths given
                    enc_ids[i, :len(e)] = torch.tensor(e)
                    dec_ids[i, :len(tgt)] = torch.tensor([self.tok.bos_id] + tgt[:-1])
                    rows += [i] * len(tgt)
                    cols += range(len(tgt))
                lengths = torch.tensor([len(e) for e in enc], device=dev)
                self.model(enc_ids.to(dev), dec_ids.to(dev), encoder_lengths=lengths, return_logits=False)
            else:
                seqs = [[self.tok.bos_id] + list(c) + tgt[:-1] for (c, _), tgt in zip(batch, targets)]
                ids = torch.full((b, max(map(len, seqs))), pad, dtype=torch.long)
                for i, (seq, (c, _), tgt) in enumerate(zip(seqs, batch, targets)):
                    # right padding needs no mask: causal (and prefix) rows never see later keys
                    ids[i, :len(seq)] = torch.tensor(seq)
                    rows += [i] * len(tgt)
                    cols += range(len(c), len(c) + len(tgt))
                prefix = None
                if self.bidirectional:  # bos + context, as instruction tuning set it
                    prefix = torch.tensor([1 + len(c) for c, _ in batch], device=dev)
                self.model(ids.to(dev), prefix_lengths=prefix, return_logits=False)
        h = hidden[-1][torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)]  # (N, C)
        tgt_ids = torch.tensor([x for tgt in targets for x in tgt], device=dev)  # (N,)
        logp, greedy = [], []
        for lo in range(0, h.shape[0], _LOGITS_CHUNK):
            logits = self.model.lm_logits(h[lo:lo + _LOGITS_CHUNK]).float()  # (n, V)
            lp = logits.log_softmax(-1)
            chunk = tgt_ids[lo:lo + _LOGITS_CHUNK]
            logp.append(lp.gather(1, chunk[:, None]).squeeze(1))
            greedy.append(logits.argmax(-1) == chunk)
        logp_all, greedy_all = torch.cat(logp).double().cpu(), torch.cat(greedy).cpu()
        res, at = [], 0
        for tgt in targets:
            n = len(tgt)
            res.append((float(logp_all[at:at + n].sum()), bool(greedy_all[at:at + n].all())))
            at += n
        return res

    # ------------------------------------------------------------------ lm-eval API
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        items = []
        for req in requests:
            context, continuation = req.args
            ctx, cont = self.encode_pair(context, continuation)
            if len(cont) > self.max_length:
                raise ValueError(f"a continuation of {len(cont)} tokens does not fit max_length={self.max_length}")
            keep = self.max_length - len(cont)  # context tokens that fit, nearest the continuation
            items.append((ctx[-keep:] if keep > 0 else [], cont))
        scorable = [i for i, (_, cont) in enumerate(items) if cont]
        scored = self.score_tokens([items[i] for i in scorable], disable_tqdm=disable_tqdm)
        out: list[tuple[float, bool]] = [(0.0, True)] * len(items)  # an empty continuation is certain
        for i, res in zip(scorable, scored):
            out[i] = res
        for req, res in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", req.args, res)
        return out

    def rolling_windows(self, n_tokens: int) -> list[tuple[int, int, int]]:
        """``(start, block_start, end)`` per window: tokens ``[start, block_start)`` are context,
        ``[block_start, end)`` are predicted; the blocks tile ``[0, n_tokens)``."""
        block, out, a = self.max_length - self.prefix_len, [], 0
        while a < n_tokens:
            b = min(a + block, n_tokens)
            out.append((max(0, b - self.max_length), a, b))
            a = b
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        items, owner = [], []
        for r, req in enumerate(requests):
            toks = self.tok_encode(req.args[0])
            for s, a, b in self.rolling_windows(len(toks)):
                items.append((toks[s:a], toks[a:b]))
                owner.append(r)
        totals = [0.0] * len(requests)
        for r, (lp, _) in zip(owner, self.score_tokens(items, disable_tqdm=disable_tqdm)):
            totals[r] += lp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def _options(self, kwargs: dict) -> tuple[SamplingOptions, list[str]]:
        kwargs = dict(kwargs or {})
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_gen = int(kwargs.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
        do_sample = bool(kwargs.pop("do_sample", False))
        temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
        top_k, top_p, seed = kwargs.pop("top_k", None), kwargs.pop("top_p", None), kwargs.pop("seed", None)
        unknown = sorted(set(kwargs) - self._warned)
        if unknown:
            self._warned.update(unknown)
            log.warning("lightning_redllm: ignoring generation kwargs %s", unknown)
        if not do_sample:
            temperature, top_k, top_p = 0.0, None, None
        elif temperature == 0.0:
            temperature = 1.0
        return SamplingOptions(max_new_tokens=max_gen, temperature=temperature, top_k=top_k, top_p=top_p,
                               seed=seed), until

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        out: list[str] = [""] * len(requests)
        bar = tqdm(total=len(requests), desc="lightning_redllm generating", disable=disable_tqdm)
        for members in groups.values():
            opts, until = self._options(requests[members[0]].args[1])
            budget = self.max_length - opts.max_new_tokens - (1 if self.family == "decllm" else 0)
            if budget < 1:
                raise ValueError(f"max_gen_toks={opts.max_new_tokens} leaves no room for a prompt in "
                                 f"max_length={self.max_length}")
            prompts = {}
            for i in members:  # empty prompt -> [eos]: the start of a document
                ids = self.tok_encode(requests[i].args[0]) or [self.tok.eos_id]
                prompts[i] = ids[-budget:]
            order = sorted(members, key=lambda i: -len(prompts[i]))
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                gen = generate(self.model, [prompts[i] for i in idx], bos_id=self.tok.bos_id, eos_id=self.tok.eos_id,
                               pad_id=self.tok.pad_id, options=opts)
                for i, ids in zip(idx, gen):
                    text = self.tok.decode(ids)
                    cut = min((p for p in (text.find(s) for s in until if s) if p >= 0), default=len(text))
                    out[i] = text[:cut]
                    self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
                bar.update(len(idx))
        bar.close()
        return out


# ---------------------------------------------------------------------------- running tasks
@functools.lru_cache(maxsize=8)
def _task_manager(paths: tuple[str, ...], include_defaults: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(paths), include_defaults=include_defaults)


def task_manager(include_path: Optional[str | Sequence[str]] = None, tasks: Optional[Sequence[str]] = None):
    """An lm-eval ``TaskManager`` that knows the bundled tasks, ``include_path`` and lm-eval's own.

    Indexing lm-eval's ~14K built-in tasks takes ~10 s, so when every name in ``tasks`` is found in
    the bundled folder or ``include_path`` the built-in ones are left out. Managers are cached per
    process (the study evaluates many checkpoints on the same tasks).
    """
    paths = [str(BUNDLED_TASKS_DIR)]
    if include_path:
        extra = [include_path] if isinstance(include_path, (str, Path)) else list(include_path)
        for p in extra:
            if not Path(p).is_dir():
                raise FileNotFoundError(f"include_path {p} is not a directory of task YAML files")
            paths.append(str(Path(p).resolve()))
    if tasks:
        local = _task_manager(tuple(paths), False)
        if all(local.match_tasks([t]) for t in tasks):
            return local
    return _task_manager(tuple(paths), True)


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _flatten_metrics(task_results: dict) -> dict[str, Optional[float]]:
    """``{"acc,none": .5, "acc_stderr,none": .1, "alias": ...}`` -> ``{"acc": .5, "acc_stderr": .1}``;
    a metric reported under several filters keeps its ``,filter`` suffix."""
    keys = [k for k in task_results if "," in k]
    names = [k.split(",", 1)[0] for k in keys]
    return {(name if names.count(name) == 1 else key): _number(task_results[key]) for key, name in zip(keys, names)}


def run_lm_eval(checkpoint: Optional[str], tasks: list[str], num_fewshot: int = 0, *, limit: int | None = None,
                batch_size: int = 8, device: str = "cpu", include_path: str | None = None, model=None,
                tokenizer=None) -> dict:
    """Run lm-eval ``tasks`` (bundled, lm-eval's own, or under ``include_path``) on a checkpoint.

    ``model`` (+ ``tokenizer``) evaluates an already-loaded model instead of reading ``checkpoint``
    (``checkpoint`` is then only recorded); it stays on its own device. Returns
    ``{"results": {task: {metric: value}}, "num_fewshot", "checkpoint", "family", ...}``, plain JSON
    (a metric lm-eval could not compute, e.g. the stderr of one sample, is ``None``).
    """
    tasks = [t.strip() for t in ([tasks] if isinstance(tasks, str) else tasks) if t and t.strip()]
    if not tasks:
        raise ValueError("run_lm_eval needs at least one task name")
    if num_fewshot < 0:
        raise ValueError(f"num_fewshot must be >= 0, got {num_fewshot}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of examples per task, got {limit}")
    tm = task_manager(include_path, tasks)
    unknown = [t for t in tasks if not tm.match_tasks([t])]
    if unknown:
        raise ValueError(f"unknown lm-eval task(s) {unknown}; bundled tasks: {BUNDLED_TASKS} "
                         "(tag lightning_redllm_bundled); for your own YAML folder pass include_path")
    if model is not None:
        lm = LightningRedLLMLM(model=model, tokenizer=tokenizer, batch_size=batch_size)
    else:
        lm = LightningRedLLMLM(checkpoint=checkpoint, tokenizer=tokenizer, device=device, batch_size=batch_size)
    out = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit, task_manager=tm,
                                  log_samples=False, bootstrap_iters=1000)
    results = {task: _flatten_metrics(r) for task, r in out["results"].items()}
    return {
        "results": results,
        "num_fewshot": int(num_fewshot),
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "family": lm.family,
        "bidirectional_prefix": lm.bidirectional,
        "limit": limit,
        "samples": {t: int(n.get("effective", n.get("original", 0))) for t, n in out.get("n-samples", {}).items()},
        "max_length": lm.max_length,
        "lm_eval_version": getattr(lm_eval, "__version__", "unknown"),
    }


def format_lm_eval_table(res: dict) -> str:
    lines = ["task | metric | value", "---|---|---"]
    for task, metrics in res["results"].items():
        for name, value in metrics.items():
            if not name.endswith("_stderr") and "_stderr," not in name:
                lines.append(f"{task} | {name} | {'n/a' if value is None else f'{value:.4f}'}")
    return "\n".join(lines)


__all__ = ["BUNDLED_TASKS", "BUNDLED_TASKS_DIR", "LightningRedLLMLM", "format_lm_eval_table", "run_lm_eval",
           "task_manager"]
