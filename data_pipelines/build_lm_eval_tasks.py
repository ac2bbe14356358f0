"""Build the offline lm-eval tasks shipped in ``lightning_redllm/assets/lm_eval_tasks/``.

lm-eval's own tasks download their data from a hub; these three are made from the bundled corpus
(``assets/corpus/redpajama``) so they run with no network:

* ``bundled_continuation_mc`` (multiple choice, acc / acc_norm): a passage of a held-out document
  and four candidate continuations -- the true one and three taken at random points of *other*
  documents of the same source (the same document only where a source has too few).
* ``bundled_heldout_ppl`` (loglikelihood_rolling: word / byte perplexity, bits per byte): the
  opening ``PPL_CHARS`` characters (cut at a line end) of every held-out document.
* ``bundled_next_word`` (generate_until, exact match; LAMBADA-like): a passage of a held-out
  document that stops right before a word which already occurred in the passage; the model must
  produce that word. Solvable by looking back into the context, so it probes in-context use.

Test items come only from held-out (``val``) documents, so they never share text with the
pretraining train split; the few-shot examples (``train`` split of each task) come from train
documents. Cut points are drawn with ``random.Random(seed)`` over a sorted candidate list, so the
output is identical on every machine for a given corpus and seed::

    python -m data_pipelines.build_lm_eval_tasks                 # rewrite the bundled task data
    python -m data_pipelines.build_lm_eval_tasks --out /tmp/tasks --seed 1
"""
from __future__ import annotations

import argparse
import json
import logging
import pathlib
import random
import re
from collections.abc import Sequence

from tqdm.auto import tqdm

from data_pipelines.build_bundled import SPLITS, corpus_files
from data_pipelines.bundled_sources import SOURCES
from data_pipelines.jsonl import iter_records
from lightning_redllm.assets import ASSETS_DIR

log = logging.getLogger("data_pipelines.build_lm_eval_tasks")

SEED = 1234
CONTEXT_CHARS = 320      # passage length before the cut (trimmed to a word start)
CONTINUATION_CHARS = 80  # multiple-choice continuation length (trimmed to a word end)
PPL_CHARS = 1200         # opening of each held-out document scored by the perplexity task
# items per source for (test = held-out documents, train = few-shot pool from train documents)
MC_ITEMS = {"book": (70, 12), "jargon": (30, 8), "fortunes": (10, 4), "python_docs": (20, 8)}
WORD_ITEMS = {"book": (70, 12), "jargon": (30, 8), "fortunes": (10, 4), "python_docs": (20, 8)}
N_CHOICES = 4
TARGET_WORD = re.compile(r"[A-Za-z]{4,}")
FEWSHOT_SPLIT = {"val": "test", "train": "train"}  # corpus split -> task split


def load_split(assets: pathlib.Path, source: str, split: str) -> list[dict]:
    return [r for f in corpus_files(assets, source, split) for r in iter_records(f)]


def _word_start(text: str, i: int) -> int:
    """First index >= i that starts a word (just after whitespace)."""
    m = re.search(r"\s\S", text[i:])
    return i + m.start() + 1 if m else len(text)


def passage_cuts(text: str) -> list[int]:
    """Indices of single spaces between two words with at least ``CONTEXT_CHARS`` before them and
    a continuation after: where a context can end and a continuation begin."""
    return [m.start() for m in re.finditer(r"(?<=\S) (?=\S)", text)
            if m.start() >= CONTEXT_CHARS and m.start() + CONTINUATION_CHARS + 1 < len(text)]


def context_before(text: str, cut: int) -> str:
    return text[_word_start(text, cut - CONTEXT_CHARS):cut]


def continuation_after(text: str, cut: int) -> str:
    """The ~``CONTINUATION_CHARS`` after the space at ``cut``, ending at a word end."""
    piece = text[cut + 1:cut + 1 + CONTINUATION_CHARS]
    end = max(piece.rfind(" "), piece.rfind("\n"))
    return piece[:end].rstrip() if end > CONTINUATION_CHARS // 2 else piece.rstrip()


def _sample(rng: random.Random, candidates: list, n: int) -> list:
    return rng.sample(candidates, min(n, len(candidates)))


def continuation_mc(docs: list[dict], source: str, n: int, rng: random.Random) -> list[dict]:
    cands = sorted((di, c) for di, d in enumerate(docs) for c in passage_cuts(d["text"]))
    items = []
    for di, cut in _sample(rng, cands, n):
        text = docs[di]["text"]
        true = continuation_after(text, cut)
        # distractors from other documents; a source with too few falls back to far-away
        # points of the same document
        others = [(dj, c) for dj, c in cands if dj != di]
        if len({dj for dj, _ in others}) < 1:
            others = [(dj, c) for dj, c in cands if abs(c - cut) > 4 * CONTEXT_CHARS]
        distractors: list[str] = []
        for dj, c in rng.sample(others, len(others)):
            alt = continuation_after(docs[dj]["text"], c)
            if alt != true and alt not in distractors:
                distractors.append(alt)
            if len(distractors) == N_CHOICES - 1:
                break
        if len(distractors) < N_CHOICES - 1:
            continue
        choices = distractors + [true]
        rng.shuffle(choices)
        items.append({"id": f"{docs[di]['meta']['id']}@{cut}", "source": source,
                      "context": context_before(text, cut), "choices": choices, "label": choices.index(true)})
    return items


def next_word(docs: list[dict], source: str, n: int, rng: random.Random) -> list[dict]:
    cands = []
    for di, d in enumerate(docs):
        text = d["text"]
        for cut in passage_cuts(text):
            m = TARGET_WORD.match(text, cut + 1)
            # the whole next word is alphabetic and already occurred in the passage
            if m is None or (m.end() < len(text) and text[m.end()].isalnum()):
                continue
            context = context_before(text, cut)
            if re.search(rf"\b{m.group()}\b", context):
                cands.append((di, cut, m.group()))
    cands.sort()
    return [{"id": f"{docs[di]['meta']['id']}@{cut}", "source": source,
             "context": context_before(docs[di]["text"], cut), "target": word}
            for di, cut, word in _sample(rng, cands, n)]


def heldout_ppl(docs: list[dict], source: str) -> list[dict]:
    out = []
    for d in docs:
        text = d["text"]
        if len(text) > PPL_CHARS:
            end = text.rfind("\n", 0, PPL_CHARS)
            text = text[:end if end > PPL_CHARS // 2 else PPL_CHARS].rstrip()
        out.append({"id": d["meta"]["id"], "source": source, "text": text})
    return out


def write_jsonl(path: pathlib.Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")


def build(assets: pathlib.Path, out: pathlib.Path, seed: int = SEED) -> dict[str, dict[str, int]]:
    """Write ``<task>.<split>.jsonl`` for every task into ``out``; returns item counts."""
    rng = random.Random(seed)
    tasks: dict[str, dict[str, list[dict]]] = {"bundled_continuation_mc": {}, "bundled_next_word": {},
                                               "bundled_heldout_ppl": {}}
    for split in tqdm(SPLITS, desc="lm-eval tasks", unit="split"):
        task_split = FEWSHOT_SPLIT[split]
        mc, words, ppl = [], [], []
        for source in sorted(SOURCES):
            docs = load_split(assets, source, split)
            want = 0 if split == "val" else 1
            mc += continuation_mc(docs, source, MC_ITEMS[source][want], rng)
            words += next_word(docs, source, WORD_ITEMS[source][want], rng)
            if split == "val":
                ppl += heldout_ppl(docs, source)
        tasks["bundled_continuation_mc"][task_split] = mc
        tasks["bundled_next_word"][task_split] = words
        if ppl:
            tasks["bundled_heldout_ppl"][task_split] = ppl
    counts = {}
    for task, splits in tasks.items():
        for split, records in splits.items():
            write_jsonl(out / f"{task}.{split}.jsonl", records)
        counts[task] = {split: len(r) for split, r in splits.items()}
        log.info("%s: %s", task, counts[task])
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.build_lm_eval_tasks",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--assets", type=pathlib.Path, default=ASSETS_DIR,
                        help="assets directory holding corpus/redpajama (default: the package's)")
    parser.add_argument("--out", type=pathlib.Path, default=ASSETS_DIR / "lm_eval_tasks",
                        help="task folder to write the jsonl files into (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build(args.assets, args.out, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
