"""Bundled data shipped inside the package: tokenizers, a small real-text corpus, built shards.

Everything here is produced by ``python -m data_pipelines.build_bundled`` and committed; nothing
is downloaded at run time. Sources and licenses are listed in ``SOURCES.md`` next to this file.

Layout::

    tokenizers/mistral-v1-32k.model       32K SentencePiece (Mistral v1, Apache-2.0)
    tokenizers/bundled-bpe-4k.json        4096-piece byte-level BPE trained on corpus/redpajama
    corpus/redpajama/<source>/{train,val}-NNNNN.jsonl.zst   RedPajama-V1 format documents
    corpus/flan/{train,val}.jsonl.zst     FLAN-collection format instruction examples
    shards/{pretrain,instruct}/{train,val}/shard-*.tar + manifest.json
    licenses/                             license texts of the bundled third-party data
"""
from __future__ import annotations

import pathlib

ASSETS_DIR = pathlib.Path(__file__).resolve().parent


def asset_path(*parts: str) -> pathlib.Path:
    """Path of a bundled asset, e.g. ``asset_path("shards", "pretrain", "train")``.

    Resolves inside the installed package; existence is not checked, so the result may also be
    used to build a pattern (``asset_path("shards", "pretrain", "train", "shard-{000000..000009}.tar")``).
    """
    return ASSETS_DIR.joinpath(*parts)
