"""Datasets of the bundled lm-eval tasks, read from the jsonl files next to this file.

lm-eval resolves ``data_files`` of a ``dataset_path: json`` task against the working directory,
so a YAML cannot name files that sit inside an installed package; the YAMLs here point
``custom_dataset`` at these functions instead, which find the files from ``__file__``. The data
is written by ``python -m data_pipelines.build_lm_eval_tasks`` (see ``SOURCES.md``).
"""
from __future__ import annotations

import pathlib

HERE = pathlib.Path(__file__).resolve().parent


def _load(task: str, **_metadata):
    import datasets

    files = {p.name.split(".")[1]: str(p) for p in sorted(HERE.glob(f"{task}.*.jsonl"))}
    if not files:
        raise FileNotFoundError(f"no data files {task}.<split>.jsonl in {HERE}; "
                                "rebuild them with python -m data_pipelines.build_lm_eval_tasks")
    return datasets.load_dataset("json", data_files=files)


def continuation_mc(**metadata):
    return _load("bundled_continuation_mc", **metadata)


def heldout_ppl(**metadata):
    return _load("bundled_heldout_ppl", **metadata)


def next_word(**metadata):
    return _load("bundled_next_word", **metadata)
