"""Training data: formats, the canonical prompt formatter, tokenization with loss masking,
padding / packing, deterministic order, and the canonical losses (docs/dataload.md)."""

from dataload.collate import Batch, pack_batch, pack_rows, pad_batch
from dataload.config import DataConfig
from dataload.dpo import DPOBatch, DPOLoader, TokenizedPair, collate_dpo, encode_dpo
from dataload.loader import Loaders, OrderedLoader, SFTLoader, build_loader, build_loaders
from dataload.losses import (
    IGNORE_INDEX,
    counted_tokens,
    cross_entropy_sum,
    dpo_loss,
    dpo_rewards,
    masked_cross_entropy,
    sequence_logprobs,
    token_logprobs,
)
from dataload.order import DataPosition, epoch_order, order_hash, shard
from dataload.probes import Probe, load_probes, score_probes
from dataload.tokenization import EncodeStats, TokenizedExample, encode_messages, encode_sft
from dataload.tokenizer import TokenizerInfo, load_tokenizer, tokenizer_info

__all__ = [
    "IGNORE_INDEX",
    "Batch",
    "DPOBatch",
    "DPOLoader",
    "DataConfig",
    "DataPosition",
    "EncodeStats",
    "Loaders",
    "OrderedLoader",
    "Probe",
    "SFTLoader",
    "TokenizedExample",
    "TokenizedPair",
    "TokenizerInfo",
    "build_loader",
    "build_loaders",
    "collate_dpo",
    "counted_tokens",
    "cross_entropy_sum",
    "dpo_loss",
    "dpo_rewards",
    "encode_dpo",
    "encode_messages",
    "encode_sft",
    "epoch_order",
    "load_probes",
    "load_tokenizer",
    "masked_cross_entropy",
    "order_hash",
    "pack_batch",
    "pack_rows",
    "pad_batch",
    "score_probes",
    "sequence_logprobs",
    "shard",
    "token_logprobs",
    "tokenizer_info",
]
