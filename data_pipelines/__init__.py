"""Offline data tools for lightning_redllm: RedPajama / FLAN jsonl -> tokenized webdataset shards,
tokenizer training, and the build of the bundled assets.

Command lines (each has ``--help``)::

    python -m data_pipelines.redpajama       RedPajama-V1 jsonl(.zst) folders -> pretrain shards
    python -m data_pipelines.flan            FLAN-collection jsonl(.zst) -> instruct shards
    python -m data_pipelines.train_tokenizer train a BPE / unigram tokenizer.json on a corpus sample
    python -m data_pipelines.build_bundled   rebuild lightning_redllm/assets (corpus, 4k BPE, shards)

The shard format is described in :mod:`data_pipelines.shards`.
"""

__version__ = "0.1.0"
