"""The lm-evaluation-harness adapter: its scores against the models' own logits (RedLLM, DecLLM,
DecLLM + BiAttn), rolling perplexity against a hand computation, generation against
``generate_text``, and the bundled offline tasks through lm-eval's own evaluator and the CLI."""
from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from lightning_redllm.config import ModelConfig  # noqa: E402
from lightning_redllm.eval.lm_eval_adapter import (  # noqa: E402
    BUNDLED_TASKS, BUNDLED_TASKS_DIR, LightningRedLLMLM, run_lm_eval, task_manager)
from lightning_redllm.generate import SamplingOptions, generate, generate_text  # noqa: E402
from lightning_redllm.models import RedLLM, build_model  # noqa: E402
from lightning_redllm.modules.checkpoint import save_safetensors  # noqa: E402
from lightning_redllm.tokenizer import load_tokenizer  # noqa: E402

SMALL = dict(d_model=64, n_heads=2, head_dim=32, ffn_dim=128, n_layers=2, n_encoder_layers=1, n_decoder_layers=1)
KINDS = ("redllm", "decllm", "decllm_biattn")

# ragged: contexts and continuations of different lengths, an empty context, trailing spaces
PAIRS = [
    ("In the beginning God created", " the heaven and the earth."),
    ("Hacker slang: a kludge is", " a clever programming trick intended to solve a particular nasty case"),
    ("The assignment statement", " binds names"),
    ("", "And God said, Let there be light: and there was light."),
    ("Fortune: ", "Cold hands, no gloves."),
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("bundled-bpe-4k")


@pytest.fixture(scope="module")
def models():
    out = {}
    for i, kind in enumerate(KINDS):
        torch.manual_seed(100 + i)
        family = "redllm" if kind == "redllm" else "decllm"
        cfg = ModelConfig.from_name(f"{family}-tiny", bidirectional_prefix=kind.endswith("biattn"), **SMALL)
        m = build_model(cfg)
        m.init_weights()
        out[kind] = m.eval()
    return out


def _instances(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def _split(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The documented token split: encode(context + continuation) after encode(context)."""
    stripped = context.rstrip()
    continuation = context[len(stripped):] + continuation
    if not stripped:
        return [], tok.encode(continuation)
    ctx = tok.encode(stripped)
    return ctx, tok.encode(stripped + continuation)[len(ctx):]


@torch.no_grad()
def _reference(model, tok, ctx: list[int], cont: list[int], bidirectional=None) -> tuple[float, bool]:
    """One unpadded sequence through the model's full logits."""
    if isinstance(model, RedLLM):
        enc = torch.tensor([ctx or [tok.eos_id]])
        dec = torch.tensor([[tok.bos_id] + cont[:-1]])
        logits = model(enc, dec, return_logits=True).logits[0]  # (n, V)
    else:
        ids = torch.tensor([[tok.bos_id] + ctx + cont[:-1]])
        bidir = model.config.bidirectional_prefix if bidirectional is None else bidirectional
        prefix = torch.tensor([1 + len(ctx)]) if bidir else None
        logits = model(ids, prefix_lengths=prefix, return_logits=True).logits[0, len(ctx):]
    lp = logits.double().log_softmax(-1)
    target = torch.tensor(cont)
    return float(lp[torch.arange(len(cont)), target].sum()), bool((logits.argmax(-1) == target).all())


@pytest.mark.parametrize("kind", KINDS)
def test_loglikelihood_matches_the_models_own_logits(models, tok, kind):
    model = models[kind]
    lm = LightningRedLLMLM(model=model, tokenizer=tok, batch_size=3)  # 5 ragged requests: 2 padded batches
    got = lm.loglikelihood(_instances("loglikelihood", PAIRS), disable_tqdm=True)
    for (context, continuation), (ll, greedy) in zip(PAIRS, got):
        ref_ll, ref_greedy = _reference(model, tok, *_split(tok, context, continuation))
        assert ll == pytest.approx(ref_ll, abs=1e-4, rel=1e-5), (context, continuation)
        assert greedy == ref_greedy
    if kind == "decllm_biattn":
        # the bidirectional prefix matters: causal scoring of the same weights gives other numbers
        ctx, cont = _split(tok, *PAIRS[0])
        assert abs(_reference(model, tok, ctx, cont, bidirectional=False)[0] - got[0][0]) > 1e-3
    # is_greedy: the model's own argmax tokens are greedy, one other token is not
    ctx = tok.encode("In the beginning")
    nxt = generate(model, [ctx], bos_id=tok.bos_id, eos_id=None, pad_id=tok.pad_id,
                   options=SamplingOptions(max_new_tokens=3))[0]
    other = nxt[:1] + [(nxt[1] + 1) % model.config.vocab_size] + nxt[2:]
    (_, greedy), (_, not_greedy) = lm.score_tokens([(ctx, nxt), (ctx, other)])
    assert greedy and not not_greedy


@pytest.mark.parametrize("kind", ["redllm", "decllm"])
def test_loglikelihood_truncates_the_context_from_the_left(models, tok, kind):
    model = models[kind]
    lm = LightningRedLLMLM(model=model, tokenizer=tok, max_length=12)
    context = "In the beginning God created the heaven and the earth. And the earth was without form"
    ctx, cont = _split(tok, context, " and void")
    assert len(ctx) + len(cont) > 12
    (ll, _), = lm.loglikelihood(_instances("loglikelihood", [(context, " and void")]), disable_tqdm=True)
    assert ll == pytest.approx(_reference(model, tok, ctx[-(12 - len(cont)):], cont)[0], abs=1e-4)


def _hand_rolling(model, tok, toks: list[int], windows: list[tuple[int, int, int]]) -> float:
    return sum(_reference(model, tok, toks[s:a], toks[a:b])[0] for s, a, b in windows)


@pytest.mark.parametrize("kind", KINDS)
def test_loglikelihood_rolling_equals_a_hand_computation(models, tok, kind):
    model = models[kind]
    text = ("1 In the beginning God created the heaven and the earth.\n2 And the earth was without form, "
            "and void; and darkness was upon the face of the deep.")
    toks = tok.encode(text)
    n = len(toks)
    assert 25 < n < 50, n
    lm = LightningRedLLMLM(model=model, tokenizer=tok, max_length=16, batch_size=2)
    if kind == "decllm":
        # no prefix: [bos] + 16-token chunks, the last (short) block read after the 16 - k tokens before it
        windows = [(0, 0, 16), (16, 16, 32)] if n >= 32 else [(0, 0, 16)]
        end = windows[-1][2]
    else:
        # prefix 8: 8-token blocks, each after the 8 tokens before it (RedLLM: in the encoder;
        # BiAttn: attended bidirectionally); the first block has none (RedLLM encoder: [eos])
        windows = [(0, 0, 8)] + [(a - 8, a, a + 8) for a in range(8, n - 8 + 1, 8)]
        end = windows[-1][2]
    if end < n:
        windows.append((n - 16, end, n))
    assert sum(b - a for _, a, b in windows) == n  # every token predicted exactly once
    got, = lm.loglikelihood_rolling(_instances("loglikelihood_rolling", [(text,)]), disable_tqdm=True)
    assert got == pytest.approx(_hand_rolling(model, tok, toks, windows), abs=1e-4)
    # a short document is one window, scored from its start
    short = "And God saw the light, that it was good."
    st = tok.encode(short)
    got_short, = lm.loglikelihood_rolling(_instances("loglikelihood_rolling", [(short,)]), disable_tqdm=True)
    first = 16 if kind == "decllm" else 8
    hand = [(0, 0, min(first, len(st)))] + ([(len(st) - 16 if len(st) > 16 else 0, first, len(st))]
                                            if len(st) > first else [])
    assert got_short == pytest.approx(_hand_rolling(model, tok, st, hand), abs=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_generate_until_is_generate_text_cut_at_the_stop_strings(models, tok, kind):
    model = models[kind]
    prompts = ["In the beginning", "Hacker slang: a kludge is a clever trick and", "def f():"]
    opts = SamplingOptions(max_new_tokens=10)
    expected = [generate_text(model, tok, [p], options=opts)[0] for p in prompts]  # one at a time
    lm = LightningRedLLMLM(model=model, tokenizer=tok, batch_size=2)  # ragged batches
    got = lm.generate_until(_instances("generate_until", [(p, {"max_gen_toks": 10, "until": []}) for p in prompts]),
                            disable_tqdm=True)
    assert got == expected
    # a stop string ends the text where it first occurs (and is not part of it)
    stops = [e[3:5] if len(e) >= 5 else "\x00" for e in expected]
    got = lm.generate_until(_instances("generate_until", [(p, {"max_gen_toks": 10, "until": [s, "\x01"]})
                                                          for p, s in zip(prompts, stops)]), disable_tqdm=True)
    for e, s, g in zip(expected, stops, got):
        assert g == (e[:e.find(s)] if s in e else e)
    assert any(s in e for s, e in zip(stops, expected))


class _Recorder(LightningRedLLMLM):
    """Records the contexts lm-eval hands over."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[tuple] = []

    def loglikelihood(self, requests, disable_tqdm=False):
        self.seen += [r.args for r in requests]
        return super().loglikelihood(requests, disable_tqdm)

    def generate_until(self, requests, disable_tqdm=False):
        self.seen += [r.args for r in requests]
        return super().generate_until(requests, disable_tqdm)


def _docs(task: str, split: str = "test") -> list[dict]:
    with open(BUNDLED_TASKS_DIR / f"{task}.{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_bundled_tasks_run_through_lm_evals_evaluator_zero_and_few_shot(models, tok):
    import lm_eval

    model = models["decllm"]
    res = run_lm_eval(None, BUNDLED_TASKS, 0, limit=4, model=model, tokenizer=tok)
    json.dumps(res)  # plain JSON
    assert set(res["results"]) == set(BUNDLED_TASKS) and res["family"] == "decllm" and res["num_fewshot"] == 0
    mc = res["results"]["bundled_continuation_mc"]
    # acc recomputed from the model's own logits on the same four documents
    hits = []
    for doc in _docs("bundled_continuation_mc")[:4]:
        scores = [_reference(model, tok, *_split(tok, doc["context"], " " + c))[0] for c in doc["choices"]]
        hits.append(max(range(len(scores)), key=scores.__getitem__) == doc["label"])
    assert mc["acc"] == pytest.approx(sum(hits) / 4)
    ppl = res["results"]["bundled_heldout_ppl"]
    assert 1.0 < ppl["byte_perplexity"] < 4096 and ppl["bits_per_byte"] == pytest.approx(math.log2(ppl["byte_perplexity"]))
    assert 0.0 <= res["results"]["bundled_next_word"]["exact_match"] <= 1.0

    # few-shot: lm-eval builds the prompts from the train split; the adapter receives them whole
    shots = {d["context"] for d in _docs("bundled_next_word", "train")}
    for n_shot in (0, 2):
        lm = _Recorder(model=model, tokenizer=tok)
        out = lm_eval.simple_evaluate(model=lm, tasks=["bundled_next_word", "bundled_continuation_mc"],
                                      num_fewshot=n_shot, limit=2, task_manager=task_manager(tasks=BUNDLED_TASKS),
                                      bootstrap_iters=0)
        assert out["results"]["bundled_next_word"]["exact_match,first_word"] is not None
        gen = [a for a in lm.seen if isinstance(a[1], dict)]
        assert len(gen) == 2 and all(a[1]["max_gen_toks"] == 8 for a in gen)
        for (context, _), doc in zip(gen, _docs("bundled_next_word")[:2]):
            assert context.endswith(doc["context"])
            blocks = context.split("\n\n")
            assert len(blocks) >= n_shot + 1
            if n_shot:
                assert any(s in context for s in shots)
            else:
                assert context == doc["context"]


def test_a_users_task_folder(models, tok, tmp_path):
    data = tmp_path / "capitals.jsonl"
    data.write_text("\n".join(json.dumps({"q": f"Question {i}:", "choices": ["yes", "no"], "label": i % 2})
                              for i in range(6)) + "\n")
    (tmp_path / "capitals.yaml").write_text(
        "task: my_yes_no\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\n    train: {data}\n"
        "output_type: multiple_choice\ntest_split: test\nfewshot_split: train\n"
        "doc_to_text: '{{q}}'\ndoc_to_choice: choices\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n")
    res = run_lm_eval(None, ["my_yes_no"], 1, model=models["redllm"], tokenizer=tok, include_path=str(tmp_path))
    assert set(res["results"]) == {"my_yes_no"} and res["samples"]["my_yes_no"] == 6
    with pytest.raises(FileNotFoundError, match="not a directory"):
        run_lm_eval(None, ["my_yes_no"], model=models["redllm"], tokenizer=tok, include_path=str(data))


def test_adapter_module_needs_lm_eval_with_a_one_line_hint(monkeypatch):
    import lightning_redllm.eval as ev

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "lightning_redllm.eval.lm_eval_adapter")
    with pytest.raises(ImportError) as info:
        ev.run_lm_eval  # noqa: B018 - the lazy attribute imports the adapter
    assert "pip install 'lightning_redllm[eval]'" in str(info.value) and "\n" not in str(info.value)
    assert ev.evaluate_perplexity is not None  # the rest of the package is unaffected
    monkeypatch.undo()
    importlib.import_module("lightning_redllm.eval.lm_eval_adapter")


@pytest.fixture(scope="module")
def ckpt(models, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "red.safetensors"
    return save_safetensors(models["redllm"], models["redllm"].config, path, tokenizer="bundled-bpe-4k")


def test_evaluate_subcommand_runs_lm_eval_tasks(ckpt, tmp_path):
    out = tmp_path / "res.json"
    r = subprocess.run([sys.executable, "-m", "lightning_redllm", "evaluate", "--ckpt", str(ckpt), "--tasks",
                        "bundled_continuation_mc,bundled_next_word", "--num_fewshot", "1", "--limit", "3",
                        "--batch_size", "4", "--device", "cpu", "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    # run outside a git repository: lm-eval's `git describe` probe must not reach the terminal
    assert "not a git repository" not in r.stderr, r.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["family"] == "redllm" and data["num_fewshot"] == 1 and data["checkpoint"] == str(ckpt)
    assert set(data["results"]) == {"bundled_continuation_mc", "bundled_next_word"}
    assert "bundled_continuation_mc | acc |" in r.stdout


def test_evaluate_option_errors_are_one_line(ckpt, capsys):
    from lightning_redllm.__main__ import main

    for argv, needle in ((["--tasks", "bundled_next_word", "--lengths", "64"], "--lengths"),
                         (["--num_fewshot", "5"], "--num_fewshot needs --tasks"),
                         (["--tasks", "bundled_next_word", "--limit", "0"], "--limit")):
        assert main(["evaluate", "--ckpt", str(ckpt), *argv]) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and needle in err[0], err


def test_lm_eval_cli_hand_off(ckpt, tmp_path, monkeypatch, capsys):
    """`python -m lightning_redllm.lm_eval ...` is lm-eval's CLI with our model and tasks (in-process:
    a subprocess would pay the imports again; the evaluate subcommand test covers that path)."""
    from lightning_redllm.lm_eval import main

    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the hand-off rewrites it for lm-eval's parser
    monkeypatch.chdir(tmp_path)
    assert main(["--model", "lightning_redllm", "--model_args", f"checkpoint={ckpt},batch_size=4",
                 "--tasks", "bundled_continuation_mc", "--limit", "2", "--device", "cpu",
                 "--output_path", str(tmp_path / "out")]) == 0
    assert "bundled_continuation_mc" in capsys.readouterr().out
    written = list((tmp_path / "out").rglob("results_*.json"))
    assert written and "acc,none" in json.loads(written[0].read_text())["results"]["bundled_continuation_mc"]
