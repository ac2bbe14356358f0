"""Train a BPE or unigram ``tokenizer.json`` on a sample of a corpus.

Inputs are files or folders: ``.jsonl`` / ``.jsonl.zst`` (RedPajama ``text``; FLAN ``inputs`` and
``targets``) and plain ``.txt`` (one text per line). ``--max-bytes`` caps the sample; the budget is
split evenly over the files so every source is represented, and each file contributes its first
documents up to its share. Special tokens: ``<pad>``=0, ``<unk>``=1, ``<s>``=2 (bos), ``</s>``=3 (eos).

    python -m data_pipelines.train_tokenizer /data/redpajama --vocab-size 32768 --kind bpe \\
        --max-bytes 2e9 --output tokenizers/rp-bpe-32k.json
"""
from __future__ import annotations

import argparse
import fnmatch
import logging
import pathlib
import sys
from collections.abc import Iterator, Sequence

from data_pipelines.jsonl import BadRecord, iter_raw_lines, parse_record, text_field

log = logging.getLogger("data_pipelines.train_tokenizer")
PATTERNS = ("*.jsonl", "*.jsonl.zst", "*.txt")


def find_files(paths: Sequence[str | pathlib.Path], patterns: Sequence[str] = PATTERNS) -> list[pathlib.Path]:
    out = []
    for p in map(pathlib.Path, paths):
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out.extend(sorted(f for f in p.rglob("*")
                              if f.is_file() and any(fnmatch.fnmatch(f.name, pat) for pat in patterns)))
        else:
            raise FileNotFoundError(f"input not found: {p}")
    if not out:
        raise ValueError(f"no files matching {list(patterns)} in {[str(p) for p in paths]}")
    return out


def iter_file_texts(path: pathlib.Path, budget: float) -> Iterator[str]:
    """Texts of one file until ``budget`` utf-8 bytes; bad lines are skipped and counted."""
    used, bad = 0, 0
    is_json = ".jsonl" in path.name
    for raw in iter_raw_lines(path):
        if used >= budget:
            break
        if raw.data is None:
            log.warning("%s:%d: %s", path, raw.line, raw.error)
            break
        if is_json:
            if not raw.data.strip():
                continue
            try:
                record = parse_record(raw.data)
                fields = ("text",) if "text" in record else ("inputs", "targets")
                texts = [text_field(record, f) for f in fields]
            except BadRecord:
                bad += 1
                continue
        else:
            try:
                texts = [raw.data.decode("utf-8")]
            except UnicodeDecodeError:
                bad += 1
                continue
        for t in texts:
            used += len(t.encode("utf-8"))
            yield t
    if bad:
        log.warning("%s: skipped %d unusable lines", path, bad)


def sample_texts(files: Sequence[pathlib.Path], max_bytes: float) -> Iterator[str]:
    share = max_bytes / len(files)
    for f in files:
        yield from iter_file_texts(f, share)


def main(argv: Sequence[str] | None = None) -> int:
    from lightning_redllm.tokenizer import train_tokenizer

    parser = argparse.ArgumentParser(prog="python -m data_pipelines.train_tokenizer",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="files or folders (*.jsonl, *.jsonl.zst, *.txt)")
    parser.add_argument("--output", "-o", required=True, help="tokenizer.json to write")
    parser.add_argument("--vocab-size", type=int, default=32768, help="default %(default)s")
    parser.add_argument("--kind", choices=("bpe", "unigram"), default="bpe",
                        help="byte-level BPE (exact round trip) or unigram (default %(default)s)")
    parser.add_argument("--max-bytes", type=float, default=1e9,
                        help="text sample size in bytes, split evenly over the files (default %(default).0e)")
    parser.add_argument("--min-frequency", type=int, default=2, help="BPE: minimum pair count (default %(default)s)")
    parser.add_argument("--include", action="append", metavar="GLOB",
                        help=f"file-name patterns inside folders (default {' '.join(PATTERNS)})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        files = find_files(args.inputs, args.include or PATTERNS)
        log.info("training a %d-piece %s tokenizer on up to %.3g bytes of %d files",
                 args.vocab_size, args.kind, args.max_bytes, len(files))
        tok = train_tokenizer(sample_texts(files, args.max_bytes), args.vocab_size, kind=args.kind,
                              output=args.output, min_frequency=args.min_frequency, texts=True)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    log.info("wrote %s: %r, %s", tok.path, tok, tok.fingerprint)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
