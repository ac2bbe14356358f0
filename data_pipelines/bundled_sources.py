"""Extract the bundled real-text corpus from locally installed public-domain / permissive sources.

Sources (Debian packages: ``apt-get install bible-kjv bible-kjv-text jargon-text fortunes-min``):

========== ======================================================== =====================================
source     documents                                                license
========== ======================================================== =====================================
book       King James Bible, one document per chapter (1,189)       public domain
jargon     The Jargon File 4.4.7 lexicon, runs of entries ~6 KB     public domain
fortunes   BSD fortune(6) files fortunes/literature/riddles, ~25 each BSD-3-Clause (UC Regents)
python_docs Python language-reference topics (``pydoc_data.topics``) PSF License 2.0
========== ======================================================== =====================================

Every document is a RedPajama-V1 record ``{"text": ..., "meta": {...}}``. ``meta["id"]`` is a stable
identifier, and the structured parts needed to derive FLAN-style tasks are kept in ``meta``
(chapter numbers; jargon entry offsets) or recoverable from the text (one ``"<n> <verse>"`` line
per verse), so :mod:`data_pipelines.bundled_flan` works from the committed corpus alone.
"""
from __future__ import annotations

import gzip
import hashlib
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

JARGON_TXT = pathlib.Path("/usr/share/doc/jargon-text/jargon.txt.gz")
FORTUNE_DIR = pathlib.Path("/usr/share/games/fortunes")
FORTUNE_FILES = ("fortunes", "literature", "riddles")  # the fortunes-min package
FORTUNES_PER_DOC = 25
JARGON_DOC_CHARS = 6000


def _require(path: pathlib.Path, package: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; install it with: apt-get install {package}")


def package_version(package: str) -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ---------------------------------------------------------------------------- King James Bible
def kjv_chapters() -> list[dict]:
    """One record per chapter; text ``"Genesis 1\\n\\n1 In the beginning ...\\n2 ..."``."""
    exe = shutil.which("bible")
    if exe is None:
        raise FileNotFoundError("'bible' not found; install it with: apt-get install bible-kjv bible-kjv-text")
    # -l sets the line width; a huge width keeps each verse on one line.
    raw = subprocess.run([exe, "-l100000", "Gen1:1-Rev22:21"], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, check=True).stdout
    version = package_version("bible-kjv-text")
    docs, current = [], None
    for line in raw.split("\n"):
        if not line.strip():
            continue
        if not line.startswith(" "):  # chapter header, e.g. "1 Samuel 3" or "Song of Solomon 2"
            book, _, chapter = line.rpartition(" ")
            current = {"book": book, "chapter": int(chapter), "verses": []}
            docs.append(current)
            continue
        number, _, verse = line.strip().partition(" ")
        if int(number) != len(current["verses"]) + 1:
            raise ValueError(f"unexpected verse numbering in {current['book']} {current['chapter']}: {line[:40]!r}")
        current["verses"].append(verse)
    records = []
    for d in docs:
        body = "\n".join(f"{i} {v}" for i, v in enumerate(d["verses"], 1))
        records.append({
            "text": f"{d['book']} {d['chapter']}\n\n{body}",
            "meta": {
                "id": f"kjv/{d['book'].replace(' ', '_')}/{d['chapter']}",
                "title": f"The Holy Bible, King James Version: {d['book']} {d['chapter']}",
                "book": d["book"], "chapter": d["chapter"], "verses": len(d["verses"]),
                "origin": f"Debian bible-kjv-text {version}", "license": "public-domain",
            },
        })
    if len(records) != 1189:
        raise ValueError(f"expected 1189 KJV chapters, got {len(records)}")
    return records


def parse_kjv_text(text: str) -> tuple[str, list[str]]:
    """(``"Genesis 1"``, verses) back from a chapter document."""
    header, _, body = text.partition("\n\n")
    return header, [line.partition(" ")[2] for line in body.split("\n")]


# ---------------------------------------------------------------------------- Jargon File
def _reflow(lines: list[str]) -> str:
    """Jargon entry body: join wrapped 3-space paragraphs, keep deeper-indented blocks verbatim."""
    paragraphs, para = [], []
    for line in lines + [""]:
        if not line.strip():
            if para:
                paragraphs.append(para)
                para = []
            continue
        para.append(line)
    out = []
    for para in paragraphs:
        if all(l.startswith("   ") and not l.startswith("    ") for l in para):
            out.append(" ".join(l.strip() for l in para))
        else:
            out.append(textwrap.dedent("\n".join(para)).rstrip())
    return "\n\n".join(out)


def _unbrace(s: str) -> str:
    return re.sub(r"\{([^{}\n]+)\}", r"\1", s)  # {cross-reference} markup -> plain words


def jargon_entries() -> list[dict]:
    """``{"term", "header", "body", "letter"}`` per lexicon entry, in file order."""
    _require(JARGON_TXT, "jargon-text")
    with gzip.open(JARGON_TXT, "rt", encoding="utf-8") as f:
        lines = f.read().replace("\u00a0", " ").split("\n")  # the HTML dump uses no-break spaces
    start = next(i for i, l in enumerate(lines) if l == "Glossary" and i > 1000)
    end = next(i for i, l in enumerate(lines) if l.startswith("Appendix A."))
    entry_re = re.compile(r"^   :(.+?):(.*)$")
    section_re = re.compile(r"^  (\S)$")
    entries, current, letter = [], None, "0"
    for line in lines[start:end]:
        m = section_re.match(line)
        if m:  # a letter section starts with a list of its terms: not part of any entry
            letter, current = m.group(1), None
            continue
        m = entry_re.match(line)
        if m:
            current = {"term": m.group(1).strip(), "header": m.group(2).strip(), "lines": [], "letter": letter}
            entries.append(current)
        elif current is not None:
            current["lines"].append(line)
    out = []
    for e in entries:
        body = _unbrace(_reflow(e["lines"]))
        if body:
            out.append({"term": e["term"], "header": _unbrace(e["header"]), "body": body, "letter": e["letter"]})
    if len(out) < 2000:
        raise ValueError(f"parsed only {len(out)} Jargon File entries; the file layout changed?")
    return out


def jargon_docs() -> list[dict]:
    """Runs of consecutive entries of one letter section, about ``JARGON_DOC_CHARS`` each."""
    version = package_version("jargon-text")
    groups, group, size = [], [], 0
    for e in jargon_entries():
        if group and (size >= JARGON_DOC_CHARS or e["letter"] != group[-1]["letter"]):
            groups.append(group)
            group, size = [], 0
        group.append(e)
        size += len(e["body"]) + len(e["term"])
    groups.append(group)
    records = []
    for g in groups:
        parts, offsets, pos = [], [], 0
        for e in g:
            head = f"{e['term']}: {e['header']}".rstrip(": ") if e["header"] else e["term"]
            entry = f"{head}\n\n{e['body']}"
            offsets.append([e["term"], pos, len(head) + 2])
            parts.append(entry)
            pos += len(entry) + 2
        records.append({
            "text": "\n\n".join(parts),
            "meta": {
                "id": f"jargon/{g[0]['letter']}/{g[0]['term']}",
                "title": f"The Jargon File 4.4.7: {g[0]['term']} ... {g[-1]['term']}",
                # [term, start offset of the entry in text, offset of its body from that start]
                "entries": offsets,
                "origin": f"Debian jargon-text {version}", "license": "public-domain",
            },
        })
    return records


def jargon_entries_of(doc: dict) -> list[tuple[str, str]]:
    """(term, body) of each entry of a jargon document, from its text and ``meta["entries"]``."""
    text, entries, out = doc["text"], doc["meta"]["entries"], []
    for i, (term, start, body_off) in enumerate(entries):
        stop = entries[i + 1][1] - 2 if i + 1 < len(entries) else len(text)
        out.append((term, text[start + body_off:stop]))
    return out


# ---------------------------------------------------------------------------- fortunes
def fortune_docs() -> list[dict]:
    version = package_version("fortunes-min")
    records = []
    for name in FORTUNE_FILES:
        path = FORTUNE_DIR / name
        _require(path, "fortunes-min")
        raw = path.read_text(encoding="utf-8")
        raw = re.sub(r".\x08", "", raw)  # nroff-style overstrike (bold / underline)
        items = [f.strip("\n") for f in re.split(r"^%$", raw, flags=re.M)]
        items = [f for f in items if f.strip()]
        for k in range(0, len(items), FORTUNES_PER_DOC):
            chunk = items[k:k + FORTUNES_PER_DOC]
            records.append({
                "text": "\n\n".join(chunk),
                "meta": {
                    "id": f"fortunes/{name}/{k // FORTUNES_PER_DOC:03d}",
                    "title": f"fortune(6) file '{name}', items {k + 1}-{k + len(chunk)}",
                    "origin": f"Debian fortunes-min {version}", "license": "BSD-3-Clause",
                },
            })
    return records


# ---------------------------------------------------------------------------- Python docs
def python_doc_docs() -> list[dict]:
    from pydoc_data import topics

    version = ".".join(map(str, sys.version_info[:3]))
    records = []
    for name in sorted(topics.topics):
        text = topics.topics[name].strip("\n")
        title = text.split("\n", 1)[0].strip()
        records.append({
            "text": text,
            "meta": {
                "id": f"python_docs/{name}", "topic": name, "title": title,
                "origin": f"CPython {version} pydoc_data.topics", "license": "PSF-2.0",
            },
        })
    return records


def first_paragraph(topic_text: str) -> str:
    """First prose paragraph of a pydoc topic (after the title and its underline)."""
    paras = [p for p in re.split(r"\n\s*\n", topic_text) if p.strip()]
    for p in paras:
        lines = p.strip().split("\n")
        if len(lines) >= 2 and set(lines[1].strip()) <= set("*=-") and lines[1].strip():
            rest = "\n".join(lines[2:]).strip()
            if rest:
                return " ".join(l.strip() for l in rest.split("\n"))
            continue
        if p.startswith(" ") or p.startswith(("New in version", "Changed in version", "Deprecated")):
            continue  # grammar / code block, version notes
        return " ".join(l.strip() for l in lines)
    return ""


# ---------------------------------------------------------------------------- split
SOURCES = {
    "book": kjv_chapters,
    "fortunes": fortune_docs,
    "jargon": jargon_docs,
    "python_docs": python_doc_docs,
}
VAL_FRACTION = 0.05


def stable_hash(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()[:8], "big")


def split_docs(source: str, docs: list[dict]) -> tuple[list[dict], list[dict]]:
    """(train, val): the ``VAL_FRACTION`` of documents with the smallest id hash (at least one) is held out.

    Both keep the original document order.
    """
    n_val = max(1, round(len(docs) * VAL_FRACTION))
    ranked = sorted(range(len(docs)), key=lambda i: stable_hash("split", source, docs[i]["meta"]["id"]))
    val_idx = set(ranked[:n_val])
    return ([d for i, d in enumerate(docs) if i not in val_idx], [d for i, d in enumerate(docs) if i in val_idx])
