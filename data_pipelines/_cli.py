"""Argument and exit-code plumbing shared by the converter command lines."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from data_pipelines.convert import ConversionError


def add_common_args(parser: argparse.ArgumentParser, default_tokens_per_shard: int) -> None:
    parser.add_argument("--output", "-o", required=True, help="output directory for shards + manifest.json")
    parser.add_argument(
        "--tokenizer", required=True,
        help="tokenizer file (tokenizer.json or SentencePiece .model) or bundled name "
             "(mistral-v1-32k, bundled-bpe-4k)",
    )
    parser.add_argument(
        "--include", action="append", metavar="GLOB",
        help="file-name pattern(s) to read (default: '*.jsonl' and '*.jsonl.zst'); repeatable",
    )
    parser.add_argument(
        "--tokens-per-shard", type=int, default=default_tokens_per_shard,
        help="close a shard once it holds this many tokens (documents are never split; "
             "default %(default)s)",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="tokenizer worker processes (default: all cores, %(default)s)")
    parser.add_argument("--chunk-size", type=int, default=256, help="lines per work item (default %(default)s)")
    parser.add_argument("--strict", action="store_true",
                        help="fail at the first bad line (malformed JSON, non-UTF-8, empty text, truncated .zst) "
                             "instead of counting and skipping it")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard an existing conversion in --output instead of resuming it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--quiet", "-q", action="store_true", help="warnings only")


def run(fn, args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        fn()
    except (ConversionError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0
