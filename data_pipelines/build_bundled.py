"""Rebuild ``lightning_redllm/assets``: corpus, FLAN set, 4k BPE tokenizer and shards.

Stages (all deterministic; each reads only what the previous ones wrote):

1. ``extract``   raw sources -> ``corpus/redpajama/<source>/{train,val}-NNNNN.jsonl.zst`` and
                 ``licenses/`` (needs ``apt-get install bible-kjv bible-kjv-text jargon-text
                 fortunes-min``; ``python_docs`` comes from this interpreter's ``pydoc_data``)
2. ``flan``      corpus -> ``corpus/flan/{train,val}.jsonl.zst``
3. ``tokenizer`` corpus train split -> ``tokenizers/bundled-bpe-4k.json`` (byte-level BPE, 4096)
4. ``shards``    -> ``shards/{pretrain,instruct}/{train,val}/`` with the 4k BPE

    python -m data_pipelines.build_bundled                       # everything
    python -m data_pipelines.build_bundled --skip-extract         # from the committed corpus
    python -m data_pipelines.build_bundled --mistral-wheel /tmp/mc/mistral_common-1.12.0-py3-none-any.whl

Stage 1 depends on the installed package versions (recorded in each document's ``meta.origin``);
stages 2-4 reproduce the committed files byte for byte from the committed corpus.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import pathlib
import shutil
import sysconfig
import zipfile
from collections.abc import Sequence

from data_pipelines import bundled_flan, bundled_sources
from data_pipelines.convert import PROGRESS_NAME
from data_pipelines.flan import convert_flan
from data_pipelines.jsonl import iter_records, write_jsonl
from data_pipelines.redpajama import convert_redpajama
from lightning_redllm.assets import ASSETS_DIR
from lightning_redllm.tokenizer import Tokenizer, load_tokenizer, train_tokenizer

log = logging.getLogger("data_pipelines.build_bundled")

SPLITS = ("train", "val")
BPE_VOCAB = 4096
MISTRAL_MEMBER = "mistral_common/data/tokenizer.model.v1"
MISTRAL_LICENSE = "mistral_common-1.12.0.dist-info/licenses/LICENSE"
MISTRAL_SHA256 = "sha256:dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"
# Target shard counts: 2 ranks x 2 workers (or more) each get whole shards.
TARGET_SHARDS = {("pretrain", "train"): 10, ("pretrain", "val"): 4,
                 ("instruct", "train"): 6, ("instruct", "val"): 4}
LICENSE_FILES = {
    "bible-kjv-text.copyright": "/usr/share/doc/bible-kjv-text/copyright",
    "jargon-text.copyright": "/usr/share/doc/jargon-text/copyright",
    "fortunes-min.copyright": "/usr/share/doc/fortunes-min/copyright",
}


FILE_CHARS = 600_000  # corpus files per source ~ this much text, like RedPajama's many files


def corpus_files(assets: pathlib.Path, source: str, split: str) -> list[pathlib.Path]:
    files = sorted((assets / "corpus" / "redpajama" / source).glob(f"{split}-*.jsonl.zst"))
    if not files:
        raise FileNotFoundError(f"no {split} corpus files for {source} in {assets}; run the extract stage")
    return files


def stage_extract(assets: pathlib.Path) -> None:
    for source, fn in bundled_sources.SOURCES.items():
        docs = fn()
        src_dir = assets / "corpus" / "redpajama" / source
        if src_dir.exists():
            shutil.rmtree(src_dir)
        for split, part in zip(SPLITS, bundled_sources.split_docs(source, docs)):
            # Contiguous runs of documents, about FILE_CHARS each.
            sizes = [len(d["text"]) for d in part]
            n_files, total, before = max(1, math.ceil(sum(sizes) / FILE_CHARS)), sum(sizes), 0
            files: list[list[dict]] = [[] for _ in range(n_files)]
            for d, size in zip(part, sizes):
                files[min(n_files - 1, before * n_files // total)].append(d)
                before += size
            for i, chunk in enumerate(files):
                write_jsonl(src_dir / f"{split}-{i:05d}.jsonl.zst", chunk)
            log.info("corpus %s/%s: %d documents in %d files", source, split, len(part), n_files)
    lic = assets / "licenses"
    lic.mkdir(parents=True, exist_ok=True)
    for name, src in LICENSE_FILES.items():
        shutil.copyfile(src, lic / name)
    shutil.copyfile(pathlib.Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt", lic / "Python-LICENSE.txt")


def load_corpus(assets: pathlib.Path) -> dict[str, dict[str, list[dict]]]:
    return {s: {split: [r for f in corpus_files(assets, s, split) for r in iter_records(f)] for split in SPLITS}
            for s in bundled_sources.SOURCES}


def stage_flan(assets: pathlib.Path) -> None:
    corpus = load_corpus(assets)
    for split in SPLITS:
        n = write_jsonl(assets / "corpus" / "flan" / f"{split}.jsonl.zst", bundled_flan.build_flan(corpus, split))
        log.info("flan/%s: %d examples", split, n)


def stage_mistral(assets: pathlib.Path, wheel: pathlib.Path) -> None:
    out = assets / "tokenizers"
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        (out / "mistral-v1-32k.model").write_bytes(z.read(MISTRAL_MEMBER))
        notice = ("mistral-v1-32k.model is tokenizer.model.v1 from the PyPI wheel mistral_common==1.12.0\n"
                  "(https://github.com/mistralai/mistral-common), Copyright Mistral AI,\n"
                  "licensed under the Apache License 2.0, reproduced below unmodified.\n\n")
        (out / "mistral-v1-32k.LICENSE").write_text(notice + z.read(MISTRAL_LICENSE).decode("utf-8"))


def stage_tokenizer(assets: pathlib.Path) -> None:
    corpus = load_corpus(assets)
    texts = [d["text"] for s in sorted(corpus) for d in corpus[s]["train"]]
    tok = train_tokenizer(texts, BPE_VOCAB, kind="bpe", output=assets / "tokenizers" / "bundled-bpe-4k.json",
                          texts=True)
    log.info("trained %r (%s)", tok, tok.fingerprint)


def _tokens_per_shard(tokenizer, texts: list[str], extra_per_doc: int, target: int) -> int:
    """Shard size giving about ``target`` shards (documents are never split, so aim a bit lower)."""
    total = sum(len(ids) for ids in tokenizer.encode_batch(texts)) + extra_per_doc * len(texts)
    return max(1, math.floor(total / (target + 0.5)))


def stage_shards(assets: pathlib.Path, workers: int) -> dict:
    # The 4k BPE of *this* assets directory, recorded under its bundled name.
    tok = Tokenizer.from_file(assets / "tokenizers" / "bundled-bpe-4k.json", name="bundled-bpe-4k")
    corpus = load_corpus(assets)
    summary = {}
    for split in SPLITS:
        out = assets / "shards" / "pretrain" / split
        texts = [d["text"] for s in corpus for d in corpus[s][split]]
        tps = _tokens_per_shard(tok, texts, 1, TARGET_SHARDS[("pretrain", split)])
        summary[("pretrain", split)] = convert_redpajama(
            [assets / "corpus" / "redpajama"], out, tok, include=[f"{split}-*.jsonl.zst"],
            tokens_per_shard=tps, workers=workers, overwrite=True, progress=False, strict=True)
        (out / PROGRESS_NAME).unlink()
    for split in SPLITS:
        out = assets / "shards" / "instruct" / split
        src = assets / "corpus" / "flan" / f"{split}.jsonl.zst"
        recs = list(iter_records(src))
        texts = [r["inputs"] for r in recs] + [r["targets"] for r in recs]
        tps = _tokens_per_shard(tok, texts, 0, TARGET_SHARDS[("instruct", split)])
        summary[("instruct", split)] = convert_flan(
            [src], out, tok, tokens_per_shard=tps, workers=workers, overwrite=True,
            progress=False, strict=True)
        (out / PROGRESS_NAME).unlink()
    for (kind, split), m in summary.items():
        need = {("pretrain", "train"): 8, ("instruct", "train"): 4}.get((kind, split), 1)
        if len(m["shards"]) < need:
            raise RuntimeError(f"{kind}/{split}: only {len(m['shards'])} shards, need >= {need}")
        log.info("shards %s/%s: %d shards, %d documents, %d tokens", kind, split, len(m["shards"]),
                 m["totals"]["documents"], m["totals"]["tokens"])
    return summary


STAGES = ("extract", "flan", "tokenizer", "shards")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.build_bundled",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--assets", type=pathlib.Path, default=ASSETS_DIR,
                        help="assets directory to write (default: the package's, %(default)s)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run")
    parser.add_argument("--skip-extract", action="store_true",
                        help="keep the committed corpus (no apt packages needed)")
    parser.add_argument("--mistral-wheel", type=pathlib.Path,
                        help="mistral_common-1.12.0 wheel to (re)extract mistral-v1-32k.model from "
                             "(pip download --no-deps mistral_common==1.12.0 -d DIR)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    assets = args.assets
    stages = [s for s in args.stages if not (args.skip_extract and s == "extract")]
    if args.mistral_wheel:
        stage_mistral(assets, args.mistral_wheel)
    mistral = assets / "tokenizers" / "mistral-v1-32k.model"
    if mistral.exists() and load_tokenizer(mistral).fingerprint != MISTRAL_SHA256:
        log.warning("%s does not match the mistral_common 1.12.0 tokenizer.model.v1 (%s)", mistral, MISTRAL_SHA256)
    run = {"extract": stage_extract, "flan": stage_flan, "tokenizer": stage_tokenizer,
           "shards": lambda a: stage_shards(a, args.workers)}
    for stage in stages:
        log.info("stage %s", stage)
        run[stage](assets)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
