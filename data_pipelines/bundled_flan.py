"""Derive a small FLAN-collection-format instruction set from the bundled corpus.

Records look like the FLAN collection's exports::

    {"inputs": ..., "targets": ..., "task_source": "lightning_redllm_bundled",
     "task_name": "kjv_verse_lookup", "template_type": "zs_noopt", "template_idx": 1, "id": ...}

``template_type`` follows FLAN: ``zs``/``fs`` = zero-/few-shot, ``opt``/``noopt`` = answer options
shown or not. Train examples come only from train documents and validation examples only from
held-out documents, so the validation split never shares text with pretraining train data.
Sampling is by sha256 of stable ids (no RNG), so the set is identical on every machine.
"""
from __future__ import annotations

from collections.abc import Callable

from data_pipelines.bundled_sources import first_paragraph, jargon_entries_of, parse_kjv_text, stable_hash

TASK_SOURCE = "lightning_redllm_bundled"

# Examples per task for (train, val).
COUNTS = {
    "kjv_verse_lookup": (300, 30),
    "kjv_next_verse": (300, 30),
    "kjv_book_of_verse": (150, 20),
    "jargon_definition": (300, 30),
    "jargon_definition_fewshot": (60, 10),
    "python_topic_intro": (80, 10),
}

_VERSE_LOOKUP = (
    "What does {ref} say in the King James Version?",
    "Quote {ref} (KJV).",
    "Recite the verse {ref} from the King James Bible.",
)
_NEXT_VERSE = (
    "Continue the passage with the verse that follows:\n\n{verse}",
    "{verse}\n\nWhat is the next verse in the King James Version?",
)
_BOOK_OF_VERSE = (
    "Which book of the Bible is this verse from?\n\n{verse}\n\nOPTIONS:\n{options}",
    "{verse}\n\nThis King James Version verse comes from which book?\nOPTIONS:\n{options}",
)
_JARGON = (
    "In hacker jargon, what does \"{term}\" mean?",
    "Define the Jargon File term: {term}",
    "What is meant by \"{term}\" according to The Jargon File?",
)
_PYTHON = (
    "Python language reference: {title}\n\nWrite the opening paragraph of this section.",
    "How does the Python documentation introduce {title}?",
)


def _pick(items: list, n: int, salt: str, key: Callable = str) -> list:
    """The ``n`` items with the smallest salted hash of ``key(item)``, in that hash order."""
    return sorted(items, key=lambda it: stable_hash(salt, key(it)))[:n]


def _template(templates: tuple, ident: str) -> tuple[int, str]:
    idx = stable_hash("template", ident) % len(templates)
    return idx, templates[idx]


def _record(task: str, ttype: str, idx: int, ident: str, inputs: str, targets: str) -> dict:
    return {"inputs": inputs, "targets": targets, "task_source": TASK_SOURCE, "task_name": task,
            "template_type": ttype, "template_idx": idx, "id": ident}


def _verses(book_docs: list[dict]) -> list[tuple[str, int, int, list[str]]]:
    out = []
    for d in book_docs:
        header, verses = parse_kjv_text(d["text"])
        out.append((d["meta"]["book"], d["meta"]["chapter"], len(verses), verses))
    return out


def kjv_tasks(book_docs: list[dict], split: str, all_books: list[str]) -> list[dict]:
    chapters = _verses(book_docs)
    refs = [(b, c, v, verses) for b, c, n, verses in chapters for v in range(1, n + 1)]
    n_lookup, n_next, n_book = (COUNTS[t][split == "val"] for t in
                                ("kjv_verse_lookup", "kjv_next_verse", "kjv_book_of_verse"))
    out = []
    for b, c, v, verses in _pick(refs, n_lookup, f"lookup/{split}", key=lambda r: f"{r[0]} {r[1]}:{r[2]}"):
        ident = f"kjv_verse_lookup/{b} {c}:{v}"
        idx, t = _template(_VERSE_LOOKUP, ident)
        out.append(_record("kjv_verse_lookup", "zs_noopt", idx, ident, t.format(ref=f"{b} {c}:{v}"), verses[v - 1]))
    pairs = [r for r in refs if r[2] < len(r[3])]
    for b, c, v, verses in _pick(pairs, n_next, f"next/{split}", key=lambda r: f"{r[0]} {r[1]}:{r[2]}"):
        ident = f"kjv_next_verse/{b} {c}:{v}"
        idx, t = _template(_NEXT_VERSE, ident)
        out.append(_record("kjv_next_verse", "zs_noopt", idx, ident, t.format(verse=verses[v - 1]), verses[v]))
    for b, c, v, verses in _pick(refs, n_book, f"book/{split}", key=lambda r: f"{r[0]} {r[1]}:{r[2]}"):
        ident = f"kjv_book_of_verse/{b} {c}:{v}"
        distractors = _pick([x for x in all_books if x != b], 3, ident)
        options = _pick([b, *distractors], 4, "order/" + ident)
        idx, t = _template(_BOOK_OF_VERSE, ident)
        out.append(_record("kjv_book_of_verse", "zs_opt", idx, ident,
                           t.format(verse=verses[v - 1], options="\n".join(f"- {o}" for o in options)), b))
    return out


def _definition(body: str) -> str:
    return body.split("\n\n", 1)[0].strip()


def jargon_tasks(jargon_docs: list[dict], split: str) -> list[dict]:
    entries = [(t, _definition(b)) for d in jargon_docs for t, b in jargon_entries_of(d)]
    # Cross-reference stubs ("See foo.") and one-liners make poor targets.
    entries = [(t, d) for t, d in entries if len(d) >= 60 and not d.startswith("See ")]
    n_zs, n_fs = COUNTS["jargon_definition"][split == "val"], COUNTS["jargon_definition_fewshot"][split == "val"]
    chosen = _pick(entries, n_zs + n_fs, f"jargon/{split}", key=lambda e: e[0])
    out = []
    for term, definition in chosen[:n_zs]:
        ident = f"jargon_definition/{term}"
        idx, t = _template(_JARGON, ident)
        out.append(_record("jargon_definition", "zs_noopt", idx, ident, t.format(term=term), definition))
    short = [e for e in entries if len(e[1]) < 300]
    for term, definition in chosen[n_zs:]:
        ident = f"jargon_definition_fewshot/{term}"
        shots = _pick([e for e in short if e[0] != term], 2, ident, key=lambda e: e[0])
        demo = "".join(f"Term: {t}\nDefinition: {d}\n\n" for t, d in shots)
        out.append(_record("jargon_definition", "fs_noopt", 0, ident, f"{demo}Term: {term}\nDefinition:", definition))
    return out


def python_tasks(python_docs: list[dict], split: str) -> list[dict]:
    out = []
    items = [(d["meta"]["topic"], d["meta"]["title"], first_paragraph(d["text"])) for d in python_docs]
    items = [it for it in items if len(it[2]) >= 40]
    for topic, title, para in _pick(items, COUNTS["python_topic_intro"][split == "val"], f"python/{split}",
                                    key=lambda it: it[0]):
        ident = f"python_topic_intro/{topic}"
        idx, t = _template(_PYTHON, ident)
        out.append(_record("python_topic_intro", "zs_noopt", idx, ident, t.format(title=title), para))
    return out


def build_flan(corpus: dict[str, dict[str, list[dict]]], split: str) -> list[dict]:
    """FLAN records of ``split`` (``"train"``/``"val"``) from ``corpus[source][split]`` documents,
    interleaved by hash so consecutive examples mix tasks."""
    all_books = sorted({d["meta"]["book"] for s in ("train", "val") for d in corpus["book"][s]})
    records = (kjv_tasks(corpus["book"][split], split, all_books)
               + jargon_tasks(corpus["jargon"][split], split)
               + python_tasks(corpus["python_docs"][split], split))
    return sorted(records, key=lambda r: stable_hash("order", split, r["id"]))
