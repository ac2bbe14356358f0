"""Data: pretokenized webdataset shards -> packed / padded batches, objectives, exact resume."""
from .base import DataStatsLogger, ShardDataModule, ShardIterableDataset
from .instruct import InstructBatch, InstructCollator, InstructDataModule, InstructDataset
from .loader import ResumableDataLoader
from .objectives import (
    IGNORE_INDEX,
    causal_lm,
    instruct_decoder_only,
    instruct_encoder_decoder,
    prefix_lm,
)
from .pretrain import PretrainBatch, PretrainDataModule, PretrainDataset
from .shards import BadShardError, ShardManifest, ShardSet, expand_shards, open_shards

__all__ = [
    "IGNORE_INDEX",
    "BadShardError",
    "DataStatsLogger",
    "InstructBatch",
    "InstructCollator",
    "InstructDataModule",
    "InstructDataset",
    "PretrainBatch",
    "PretrainDataModule",
    "PretrainDataset",
    "ResumableDataLoader",
    "ShardDataModule",
    "ShardIterableDataset",
    "ShardManifest",
    "ShardSet",
    "causal_lm",
    "expand_shards",
    "instruct_decoder_only",
    "instruct_encoder_decoder",
    "open_shards",
    "prefix_lm",
]
