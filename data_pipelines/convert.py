"""The conversion engine shared by the RedPajama and FLAN converters: jsonl -> tokenized shards.

Pipeline: the main process reads raw lines in input order and hands chunks of them to a pool of
worker processes, which parse, validate and tokenize; results come back in submission order, so the
documents, their keys and the shard boundaries depend only on the input, never on ``workers``.
A shard is closed once it holds ``tokens_per_shard`` tokens (documents are never split).

Bad lines (malformed JSON, invalid UTF-8, empty text / inputs / targets, a truncated ``.zst``)
are counted, logged with ``file:line`` and skipped; ``strict=True`` raises :class:`ConversionError`
at the first one instead.

Resume: after each finished shard one line is appended to ``progress.jsonl`` in the output
directory with the shard's statistics and the reader position (file, line), the per-source
document counters and the error counts at that point. A re-run with the same inputs, tokenizer and
settings keeps every listed shard still on disk with its recorded size, continues reading after
the last one and writes ``manifest.json`` (``"complete": true``) last. A finished directory is
left as is. ``progress.jsonl`` stays next to the manifest so a deleted manifest or shard can be
rebuilt without redoing the rest.
"""
from __future__ import annotations

import collections
import json
import logging
import multiprocessing
import os
import pathlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from data_pipelines import __version__
from data_pipelines.jsonl import ERROR_KINDS, BadRecord, iter_raw_lines, parse_record, text_field
from data_pipelines.shards import (
    FORMAT,
    KINDS,
    MANIFEST_NAME,
    SHARD_RE,
    ShardWriter,
    dtype_for_vocab,
    new_manifest,
    read_manifest,
    sample_key,
    key_prefix,
    shard_name,
    write_manifest,
)
from lightning_redllm.tokenizer import BUNDLED_TOKENIZERS, Tokenizer, load_tokenizer

log = logging.getLogger("data_pipelines")

PROGRESS_NAME = "progress.jsonl"
MAX_EXAMPLES = 50  # error examples kept in the manifest / logged one by one


class ConversionError(ValueError):
    """A bad input line under ``strict=True``, or an output directory that cannot be resumed."""


@dataclass(frozen=True)
class InputFile:
    """One input file; ``source`` labels pretrain documents (unused for instruct)."""

    path: pathlib.Path
    source: str = ""


class ErrorLog:
    """Counts of skipped lines per kind, plus the first :data:`MAX_EXAMPLES` as ``file:line: message``."""

    def __init__(self, state: dict | None = None):
        state = state or {}
        self.counts = {k: int(state.get(k, 0)) for k in ERROR_KINDS}
        self.examples = list(state.get("examples", []))

    def add(self, kind: str, where: str, message: str) -> None:
        self.counts[kind] += 1
        total = sum(self.counts.values())
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where}: {kind}: {message}")
        if total <= MAX_EXAMPLES:
            log.warning("skipped %s: %s: %s", where, kind, message)
        elif total == MAX_EXAMPLES + 1:
            log.warning("more bad lines; further ones are only counted (see manifest 'errors')")

    def to_dict(self) -> dict:
        return {**self.counts, "examples": list(self.examples)}


# ---------------------------------------------------------------------------- worker side
_TOKENIZER: Tokenizer | None = None


def _init_worker(path: str, name: str) -> None:
    global _TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    _TOKENIZER = Tokenizer.from_file(path, name=name)


def _instruct_task(record: dict) -> str:
    # FLAN exports differ: the collection uses task_name, HF dumps (Open-Orca/FLAN) use _task_name.
    task = record.get("task_name", record.get("_task_name"))
    return task if isinstance(task, str) and task else "unknown"


def _process_chunk(job: tuple) -> list[tuple]:
    """Parse, validate and tokenize a chunk of raw lines of one file.

    Returns, per line in order, ``(line, "doc", label, tokens)`` (pretrain),
    ``(line, "doc", label, inputs, targets)`` (instruct) or ``(line, "error", kind, message)``.
    """
    kind, source, lines = job
    tok = _TOKENIZER
    dtype = dtype_for_vocab(tok.vocab_size)
    parsed: list[tuple] = []
    texts: list[str] = []
    for line, data, error in lines:
        if data is None:
            parsed.append((line, "error", "truncated_file", error))
            continue
        try:
            record = parse_record(data)
            if kind == "pretrain":
                texts.append(text_field(record, "text"))
                parsed.append((line, "doc", source))
            else:
                inputs, targets = text_field(record, "inputs"), text_field(record, "targets")
                texts.extend((inputs, targets))
                parsed.append((line, "doc", _instruct_task(record)))
        except BadRecord as e:
            parsed.append((line, "error", e.kind, str(e)))
    encoded = iter(tok.encode_batch(texts))
    out = []
    for item in parsed:
        if item[1] != "doc":
            out.append(item)
        elif kind == "pretrain":
            ids = next(encoded)
            ids.append(tok.eos_id)
            out.append((*item, np.asarray(ids, dtype=dtype)))
        else:
            out.append((*item, np.asarray(next(encoded), dtype=dtype), np.asarray(next(encoded), dtype=dtype)))
    return out


# ---------------------------------------------------------------------------- main side
def tokenizer_record(tok: Tokenizer) -> dict:
    """The manifest's ``tokenizer`` block. Bundled tokenizers get a package-relative path."""
    path = str(tok.path)
    if tok.name in BUNDLED_TOKENIZERS:
        path = "lightning_redllm/assets/" + "/".join(BUNDLED_TOKENIZERS[tok.name])
    return {
        "path": path,
        "name": tok.name,
        "fingerprint": tok.fingerprint,
        "vocab_size": tok.vocab_size,
        "bos_id": tok.bos_id,
        "eos_id": tok.eos_id,
        "pad_id": tok.pad_id,
        "unk_id": tok.unk_id,
    }


def _job_record(kind, inputs, out_dir, tok, tokens_per_shard) -> dict:
    """What must match for a resume: paths are stored relative to the output directory."""
    return {
        "format": FORMAT,
        "kind": kind,
        "tool_version": __version__,
        "tokenizer_fingerprint": tok.fingerprint,
        "tokens_per_shard": tokens_per_shard,
        "inputs": [
            [os.path.relpath(i.path.resolve(), out_dir.resolve()), i.source, i.path.stat().st_size]
            for i in inputs
        ],
    }


def _new_stats(kind: str) -> dict:
    extra = {"input_tokens": 0, "target_tokens": 0} if kind == "instruct" else {}
    return {"documents": 0, "tokens": 0, **extra}


def _add_stats(stats: dict, other: dict) -> None:
    for k, v in other.items():
        if k == "sources":
            for label, s in v.items():
                _add_stats(stats["sources"].setdefault(label, dict.fromkeys(s, 0)), s)
        elif isinstance(v, int):
            stats[k] = stats.get(k, 0) + v


def _load_progress(out_dir: pathlib.Path, job: dict) -> list[dict] | None:
    """Finished-shard records of a previous run with the same job, or ``None`` when there is none."""
    path = out_dir / PROGRESS_NAME
    if not path.exists():
        return None
    records = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        raise ConversionError(f"{path}: unreadable progress file; re-run with overwrite") from None
    if header.get("job") != job:
        raise ConversionError(
            f"{out_dir} holds a conversion with other inputs, tokenizer or settings "
            f"(see {path}); use another output directory or overwrite=True / --overwrite"
        )
    for line in lines[1:]:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a write cut short by a crash: everything after it is redone
    return records


def _is_our_tmp(name: str) -> bool:
    """Temporary files of ShardWriter / write_json_atomic / the progress rewrite."""
    return name.endswith(".tmp") and (
        name.endswith(".tar.tmp") or name.startswith((MANIFEST_NAME + ".", PROGRESS_NAME + "."))
    )


def _prepare_output(out_dir: pathlib.Path, job: dict, overwrite: bool) -> tuple[list[dict], dict | None]:
    """Clean or resume ``out_dir``; returns (kept shard records, the complete manifest if done)."""
    progress_path = out_dir / PROGRESS_NAME
    if overwrite:
        for p in out_dir.iterdir():
            if SHARD_RE.match(p.name) or p.name in (MANIFEST_NAME, PROGRESS_NAME) or _is_our_tmp(p.name):
                p.unlink()
    records = _load_progress(out_dir, job)
    manifest_path = out_dir / MANIFEST_NAME
    if records is None:
        if manifest_path.exists():
            raise ConversionError(
                f"{out_dir} holds a manifest but no {PROGRESS_NAME}; use overwrite=True / --overwrite"
            )
        records = []
    kept = []
    for rec in records:
        p = out_dir / rec["name"]
        if rec["name"] != shard_name(len(kept)) or not p.is_file() or p.stat().st_size != rec["bytes"]:
            break
        kept.append(rec)
    if manifest_path.exists() and len(kept) == len(records):
        try:
            manifest = read_manifest(out_dir)
            if len(manifest["shards"]) == len(kept):
                return kept, manifest
        except ValueError:
            pass
    # From here on the directory is being (re)built: drop what is not a kept shard.
    for p in out_dir.iterdir():
        m = SHARD_RE.match(p.name)
        if (m and int(m.group(1)) >= len(kept)) or _is_our_tmp(p.name) or p.name == MANIFEST_NAME:
            p.unlink()
    tmp = progress_path.with_name(PROGRESS_NAME + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps({"job": job}) + "\n")
        for rec in kept:
            f.write(json.dumps(rec) + "\n")
    os.replace(tmp, progress_path)  # a crash here must not lose the record of the kept shards
    if kept:
        log.info("resuming %s: %d finished shard(s) kept", out_dir, len(kept))
    return kept, None


def _chunks(inputs: Sequence[InputFile], kind: str, resume: dict | None, chunk_size: int) -> Iterator[tuple]:
    """``(file_index, bytes_read, job)`` chunks of raw lines, starting after the resume position.

    ``bytes_read`` counts file bytes (compressed for ``.zst``) and only drives the progress bar.
    """
    start_file, start_line = (resume["file"], resume["line"]) if resume else (0, 0)
    for fi in range(start_file, len(inputs)):
        inp = inputs[fi]
        batch, pos, reported = [], [0], 0
        for raw in iter_raw_lines(inp.path, start_after=start_line if fi == start_file else 0, position=pos):
            if raw.data is not None and not raw.data.strip():
                continue  # blank lines are not records
            batch.append(tuple(raw))
            if len(batch) >= chunk_size:
                yield fi, pos[0] - reported, (kind, inp.source, batch)
                batch, reported = [], pos[0]
        # Report the whole file as read, also when it ends in blank lines or is skipped by a resume.
        yield fi, inp.path.stat().st_size - reported, (kind, inp.source, batch)


def _results(chunks: Iterator[tuple], tok: Tokenizer, workers: int) -> Iterator[tuple]:
    """Run :func:`_process_chunk` over ``chunks`` on ``workers`` processes, yielding in order."""
    if workers <= 1:
        global _TOKENIZER
        previous, _TOKENIZER = _TOKENIZER, tok
        try:
            for fi, nbytes, job in chunks:
                yield fi, nbytes, _process_chunk(job)
        finally:
            _TOKENIZER = previous
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    pool = ctx.Pool(workers, initializer=_init_worker, initargs=(str(tok.path), tok.name))
    pending: collections.deque = collections.deque()
    try:
        for fi, nbytes, job in chunks:
            pending.append((fi, nbytes, pool.apply_async(_process_chunk, (job,))))
            # Bounded read-ahead: Pool.imap would pull the whole input into memory.
            while len(pending) >= 4 * workers:
                fi0, n0, res = pending.popleft()
                yield fi0, n0, res.get()
        while pending:
            fi0, n0, res = pending.popleft()
            yield fi0, n0, res.get()
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def convert(
    inputs: Sequence[InputFile],
    output_dir: str | os.PathLike,
    tokenizer: str | os.PathLike | Tokenizer,
    kind: str = "pretrain",
    tokens_per_shard: int = 50_000_000,
    workers: int = 1,
    chunk_size: int = 256,
    strict: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Tokenize ``inputs`` into shards + ``manifest.json`` under ``output_dir``; returns the manifest.

    See the module docstring for ordering, error handling and resume. ``tokenizer`` is a path, a
    bundled name or a :class:`Tokenizer`. An input file that yields no document is logged as a
    warning; :class:`ConversionError` when no document at all was converted (no manifest is written).
    """
    from tqdm.auto import tqdm

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if tokens_per_shard < 1 or chunk_size < 1:
        raise ValueError("tokens_per_shard and chunk_size must be >= 1")
    inputs = [InputFile(pathlib.Path(i.path), i.source) for i in inputs]
    if not inputs:
        raise ValueError("no input files")
    for i in inputs:
        if not i.path.is_file():
            raise FileNotFoundError(f"input file not found: {i.path}")
    empty = [i.path for i in inputs if i.path.stat().st_size == 0]
    for path in empty:
        log.warning("input file %s is empty (0 bytes); no documents from it", path)
    if len(empty) == len(inputs):
        # refuse before the output directory is touched (--overwrite would clear it first)
        raise ConversionError(f"nothing to convert: every input file is empty (0 bytes), e.g. {empty[0]}")
    tok = load_tokenizer(tokenizer)
    out_dir = pathlib.Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    job = _job_record(kind, inputs, out_dir, tok, tokens_per_shard)
    shards, done = _prepare_output(out_dir, job, overwrite)
    if done is not None:
        log.info("%s is already complete (%d shards); nothing to do", out_dir, len(shards))
        return done

    resume = shards[-1]["resume"] if shards else None
    errors = ErrorLog(resume["errors"] if resume else None)
    counters: dict[str, int] = dict(resume["counters"]) if resume else {}
    progress_file = open(out_dir / PROGRESS_NAME, "a", encoding="utf-8")
    writer: ShardWriter | None = None
    stats = None
    last_pos = (resume["file"], resume["line"]) if resume else (0, 0)

    def finish_shard():
        nonlocal writer, stats
        path = writer.close()
        rec = {"name": path.name, **stats, "bytes": path.stat().st_size}
        rec["resume"] = {"file": last_pos[0], "line": last_pos[1], "counters": dict(counters),
                         "errors": errors.to_dict()}
        progress_file.write(json.dumps(rec) + "\n")
        progress_file.flush()
        os.fsync(progress_file.fileno())
        shards.append(rec)
        writer, stats = None, None

    first_file = resume["file"] if resume else 0
    records_in = collections.Counter()  # per input file read in this run: records (documents + bad lines)
    documents_in = collections.Counter()
    total_bytes = sum(i.path.stat().st_size for i in inputs[first_file:])
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"{kind} -> {out_dir.name}",
               disable=not progress, dynamic_ncols=True)
    try:
        for fi, nbytes, results in _results(_chunks(inputs, kind, resume, chunk_size), tok, workers):
            inp = inputs[fi]
            for item in results:
                line = item[0]
                records_in[fi] += 1
                if item[1] == "error":
                    where = f"{inp.path}:{line}"
                    if strict:
                        raise ConversionError(f"{where}: {item[2]}: {item[3]} (strict mode)")
                    errors.add(item[2], where, item[3])
                    continue
                label = item[2]
                prefix = key_prefix(label)
                key = sample_key(label, counters.get(prefix, 0))
                counters[prefix] = counters.get(prefix, 0) + 1
                if writer is None:
                    writer = ShardWriter(out_dir / shard_name(len(shards)))
                    stats = {**_new_stats(kind), "sources": {}}
                if kind == "pretrain":
                    tokens = item[3]
                    writer.write(key, {"tokens.npy": tokens, "source.txt": label})
                    doc = {"documents": 1, "tokens": int(tokens.size)}
                else:
                    inp_ids, tgt_ids = item[3], item[4]
                    writer.write(key, {"inputs.npy": inp_ids, "targets.npy": tgt_ids, "task.txt": label})
                    doc = {"documents": 1, "tokens": int(inp_ids.size + tgt_ids.size),
                           "input_tokens": int(inp_ids.size), "target_tokens": int(tgt_ids.size)}
                _add_stats(stats, doc)
                documents_in[fi] += 1
                stats["sources"].setdefault(label, dict.fromkeys(doc, 0))
                _add_stats(stats["sources"][label], doc)
                last_pos = (fi, line)
                if stats["tokens"] >= tokens_per_shard:
                    finish_shard()
            bar.update(nbytes)
            bar.set_postfix(shards=len(shards), docs=sum(counters.values()), refresh=False)
        if writer is not None:
            finish_shard()
        # the last shard is usually closed after the last chunk: show the final counts, not those before it
        bar.set_postfix(shards=len(shards), docs=sum(counters.values()), refresh=False)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()
        progress_file.close()

    for fi in range(first_file, len(inputs)):
        path = inputs[fi].path
        if (fi == first_file and resume) or path in empty:
            continue  # partly converted by an earlier run / already reported
        if not records_in[fi]:
            log.warning("input file %s holds no records (only blank lines); no documents from it", path)
        elif not documents_in[fi]:
            log.warning("input file %s: none of its %d record(s) could be converted (bad lines, see above)",
                        path, records_in[fi])
    totals = {**_new_stats(kind), "sources": {}}
    for s in shards:
        _add_stats(totals, {k: v for k, v in s.items() if k not in ("bytes", "resume", "name")})
    if not totals["documents"]:
        bad = sum(errors.counts.values())
        why = f"all {bad} record(s) were bad lines (see the warnings)" if bad else "they hold no records"
        raise ConversionError(f"no document converted from {len(inputs)} input file(s) "
                              f"(first: {inputs[0].path}): {why}; no manifest written")
    manifest = new_manifest(kind, tokenizer_record(tok), dtype_for_vocab(tok.vocab_size).name,
                            [{k: v for k, v in s.items() if k != "resume"} for s in shards],
                            totals=totals, errors=errors.to_dict(), complete=True, tool_version=__version__)
    write_manifest(out_dir, manifest)
    log.info("%s: %d shards, %d documents, %d tokens, %d bad lines skipped", out_dir, len(shards),
             totals["documents"], totals["tokens"], sum(errors.counts.values()))
    return manifest

