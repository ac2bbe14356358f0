"""RedPajama-V1 jsonl / jsonl.zst -> tokenized pretraining shards.

Input layout (RedPajama-Data-1T): one folder per source, any name, files anywhere below it::

    redpajama/arxiv/arxiv_023827cd-....jsonl
    redpajama/book/book.jsonl
    redpajama/common_crawl/2019-30/en_head_0000.json.gz.dedup.classifier.jsonl.zst
    ...

Each line is ``{"text": ..., "meta": {...}}``; the source is the folder name (or ``--source`` for a
flat folder or single files). Documents are written in a fixed order that does not depend on
``--workers``: files are interleaved across sources in proportion to their sizes (each file is
placed at the relative position of its midpoint within its source; ``--by-source`` keeps every
source contiguous instead), and lines keep their order within a file. With sources spread over
many files, as in RedPajama, consecutive shards therefore hold a mix of sources.

    python -m data_pipelines.redpajama /data/redpajama --output /data/shards/pretrain \\
        --tokenizer mistral-v1-32k --workers 32
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import pathlib
from collections.abc import Sequence

from data_pipelines import _cli
from data_pipelines.convert import InputFile, convert

DEFAULT_PATTERNS = ("*.jsonl", "*.jsonl.zst")


def _matching_files(directory: pathlib.Path, patterns: Sequence[str]) -> list[pathlib.Path]:
    return sorted(
        p for p in directory.rglob("*")
        if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in patterns)
    )


def interleave(files_of: dict[str, list[pathlib.Path]]) -> list[InputFile]:
    """Order files so sources mix in proportion to their bytes (see the module docstring)."""
    keyed = []
    for src, files in files_of.items():
        sizes = [f.stat().st_size for f in files]
        total, before = sum(sizes) or 1, 0
        for i, (f, size) in enumerate(zip(files, sizes)):
            keyed.append(((before + size / 2) / total, src, i, f))
            before += size
    return [InputFile(f, src) for _, src, _, f in sorted(keyed)]


def discover_inputs(
    roots: Sequence[str | os.PathLike],
    source: str | None = None,
    include: Sequence[str] | None = None,
    by_source: bool = False,
) -> list[InputFile]:
    """The ordered input files of one or more RedPajama roots.

    Without ``source`` every root must hold one sub-folder per source; with it, roots may be flat
    folders or files, all labelled ``source``. Files are interleaved across sources by size
    (:func:`interleave`) unless ``by_source``. Raises ``ValueError`` when nothing matches or the
    layout is ambiguous.
    """
    patterns = tuple(include) if include else DEFAULT_PATTERNS
    files_of: dict[str, list[pathlib.Path]] = {}
    for root in map(pathlib.Path, roots):
        if not root.exists():
            raise FileNotFoundError(f"input not found: {root}")
        if source is not None:
            files = [root] if root.is_file() else _matching_files(root, patterns)
            files_of.setdefault(source, []).extend(files)
            continue
        if root.is_file():
            raise ValueError(f"{root} is a file; pass --source NAME to label it")
        loose = [p for p in root.iterdir() if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in patterns)]
        if loose:
            raise ValueError(
                f"{root} holds data files directly ({loose[0].name}, ...); RedPajama roots have one "
                "sub-folder per source -- pass --source NAME for a flat folder"
            )
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            files = _matching_files(sub, patterns)
            if files:
                files_of.setdefault(sub.name, []).extend(files)
    inputs = ([InputFile(p, src) for src in sorted(files_of) for p in files_of[src]] if by_source
              else interleave(files_of))
    if not inputs:
        raise ValueError(f"no input files matching {list(patterns)} under {[os.fspath(r) for r in roots]}")
    return inputs


def convert_redpajama(
    roots: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    tokenizer,
    source: str | None = None,
    include: Sequence[str] | None = None,
    by_source: bool = False,
    **kwargs,
) -> dict:
    """:func:`discover_inputs` + :func:`data_pipelines.convert.convert` (``kind="pretrain"``); returns the manifest."""
    inputs = discover_inputs(roots, source, include, by_source=by_source)
    return convert(inputs, output_dir, tokenizer, kind="pretrain", **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_pipelines.redpajama",
        description="Tokenize RedPajama-V1 jsonl / jsonl.zst into webdataset shards + manifest.json "
                    "(resumable: re-run the same command after an interruption).",
    )
    parser.add_argument("inputs", nargs="+", help="RedPajama root folder(s) with one sub-folder per source")
    parser.add_argument("--source", help="treat the inputs as flat folders / files of this one source")
    parser.add_argument("--by-source", action="store_true",
                        help="write sources one after another (alphabetical) instead of interleaving files")
    _cli.add_common_args(parser, default_tokens_per_shard=50_000_000)
    args = parser.parse_args(argv)
    return _cli.run(lambda: convert_redpajama(
        args.inputs, args.output, args.tokenizer, source=args.source, include=args.include,
        by_source=args.by_source,
        tokens_per_shard=args.tokens_per_shard, workers=args.workers, chunk_size=args.chunk_size,
        strict=args.strict, overwrite=args.overwrite, progress=not args.no_progress,
    ), args)


if __name__ == "__main__":
    raise SystemExit(main())
