"""FLAN-collection jsonl / jsonl.zst -> tokenized instruction-tuning shards.

Each line is ``{"inputs": ..., "targets": ..., "task_name": ..., "template_type": ...}`` (the
FLAN collection export; the ``_task_name`` spelling of HF dumps is accepted too). Inputs and
targets are tokenized separately, without eos and without truncation -- the DataModule applies the
length limits. Examples are written in input order (files in the order given, folders sorted).

    python -m data_pipelines.flan /data/flan/*.jsonl.zst --output /data/shards/instruct \\
        --tokenizer mistral-v1-32k
"""
from __future__ import annotations

import argparse
import os
import pathlib
from collections.abc import Sequence

from data_pipelines import _cli
from data_pipelines.convert import InputFile, convert
from data_pipelines.redpajama import DEFAULT_PATTERNS, _matching_files


def discover_inputs(paths: Sequence[str | os.PathLike], include: Sequence[str] | None = None) -> list[InputFile]:
    """Files as given, folders expanded (recursively, sorted) to their matching files."""
    patterns = tuple(include) if include else DEFAULT_PATTERNS
    inputs = []
    for p in map(pathlib.Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"input not found: {p}")
        if p.is_file():
            inputs.append(InputFile(p))
        else:
            inputs.extend(InputFile(f) for f in _matching_files(p, patterns))
    if not inputs:
        raise ValueError(f"no input files matching {list(patterns)} in {[os.fspath(p) for p in paths]}")
    return inputs


def convert_flan(paths: Sequence[str | os.PathLike], output_dir, tokenizer, include=None, **kwargs) -> dict:
    """:func:`discover_inputs` + :func:`data_pipelines.convert.convert` (``kind="instruct"``); returns the manifest."""
    return convert(discover_inputs(paths, include), output_dir, tokenizer, kind="instruct", **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_pipelines.flan",
        description="Tokenize FLAN-collection jsonl / jsonl.zst (inputs, targets, task_name) into "
                    "webdataset shards + manifest.json (resumable).",
    )
    parser.add_argument("inputs", nargs="+", help="jsonl / jsonl.zst files or folders")
    _cli.add_common_args(parser, default_tokens_per_shard=20_000_000)
    args = parser.parse_args(argv)
    return _cli.run(lambda: convert_flan(
        args.inputs, args.output, args.tokenizer, include=args.include,
        tokens_per_shard=args.tokens_per_shard, workers=args.workers, chunk_size=args.chunk_size,
        strict=args.strict, overwrite=args.overwrite, progress=not args.no_progress,
    ), args)


if __name__ == "__main__":
    raise SystemExit(main())
