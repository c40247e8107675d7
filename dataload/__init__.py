"""Training data: formats, the canonical prompt formatter, tokenization with loss masking,
padding / packing, deterministic order, and the canonical losses (docs/dataload.md).

Names are imported lazily, so ``dataload.schema`` / ``dataload.prompt_format`` users (the corpus
pipeline, the inference client) do not pay for importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "dataload.collate": ["Batch", "pack_batch", "pack_rows", "pad_batch"],
    "dataload.config": ["DataConfig"],
    "dataload.dpo": ["DPOBatch", "DPOLoader", "TokenizedPair", "collate_dpo", "encode_dpo"],
    "dataload.loader": ["Loaders", "SFTLoader", "build_loader", "build_loaders"],
    "dataload.losses": [
        "IGNORE_INDEX",
        "counted_tokens",
        "cross_entropy_sum",
        "dpo_loss",
        "dpo_reward_metrics",
        "dpo_rewards",
        "masked_cross_entropy",
        "sequence_logprobs",
        "target_logprob_rows",
        "token_logprobs",
    ],
    "dataload.order": ["DataPosition", "epoch_order", "order_hash", "shard"],
    "dataload.ordered_loader": ["OrderedLoader"],
    "dataload.probes": ["Probe", "load_probes", "score_probes"],
    "dataload.tokenization": ["EncodeStats", "TokenizedExample", "encode_messages", "encode_sft"],
    "dataload.tokenizer": ["TokenizerInfo", "load_tokenizer", "tokenizer_info"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'dataload' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
