"""DPO preference pairs: tokenized chosen / rejected conversations and their batches.

A pair is tokenized as two conversations, ``prompt + chosen`` and ``prompt + rejected``, through
the same path as SFT (:func:`encode_messages`), so the completion mask is the assistant mask:
``log π(y|x)`` sums the log-probabilities of the assistant tokens of the continuation (tool
output inside a continuation is context, not counted). A pair is dropped (and counted) when
either side is dropped by the truncation policy, or when either completion is empty (it would
teach a preference for an end-of-text token alone); each dropped pair is listed in
``quarantine`` with its reason.

A :class:`DPOBatch` holds one padded :class:`Batch` of ``2n`` rows — the ``n`` chosen rows,
then the ``n`` rejected rows — so policy and reference log-probs come from one forward each;
:meth:`DPOBatch.split` cuts per-row values back into (chosen, rejected).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dataload.collate import Batch, pad_batch
from dataload.order import DataPosition
from dataload.ordered_loader import OrderedLoader
from dataload.prompt_format import PromptMode, turns_to_messages
from dataload.tokenization import (
    EncodeStats,
    TokenizedExample,
    Truncation,
    encode_messages,
    truncate,
)


@dataclass(frozen=True)
class TokenizedPair:
    """A tokenized preference pair."""

    id: str
    chosen: TokenizedExample
    rejected: TokenizedExample

    def digest(self) -> bytes:
        return hashlib.sha256(self.chosen.digest() + self.rejected.digest()).digest()


def encode_dpo(
    pair,
    tokenizer,
    *,
    eos_id: int,
    max_length: int,
    mode: PromptMode = "completion",
    truncation: Truncation = "right",
    stats: EncodeStats | None = None,
    quarantine: list[dict] | None = None,
) -> TokenizedPair | None:
    """Tokenize a :class:`~dataload.schema.DPOPair`; ``None`` when the policy drops it.

    ``stats`` counts pairs (a pair is truncated if either side is); ``quarantine`` receives
    ``{"id", "reason"}`` for each dropped pair.
    """
    stats = stats if stats is not None else EncodeStats()
    quarantine = quarantine if quarantine is not None else []
    empty = [
        name
        for name, turns in (("chosen", pair.chosen), ("rejected", pair.rejected))
        if not any(t.text.strip() for t in turns if t.speaker == "assistant")
    ]
    if empty:
        stats.examples += 1
        stats.dropped_no_target += 1
        stats.dropped_ids.append(pair.id)
        quarantine.append({"id": pair.id, "reason": f"empty completion: {' and '.join(empty)}"})
        return None
    side_stats = EncodeStats()
    sides = []
    for name, turns in (("chosen", pair.chosen), ("rejected", pair.rejected)):
        ids, labels = encode_messages(
            turns_to_messages([*pair.prompt, *turns]), tokenizer, eos_id=eos_id, mode=mode
        )
        sides.append(
            truncate(
                f"{pair.id}:{name}",
                ids,
                labels,
                max_length=max_length,
                policy=truncation,
                stats=side_stats,
            )
        )
    stats.examples += 1
    if None in sides:
        if side_stats.dropped_too_long:
            stats.dropped_too_long += 1
            reason = f"longer than max_length {max_length} (truncation: drop)"
        else:
            stats.dropped_no_target += 1
            cut = [n for n, side in zip(("chosen", "rejected"), sides, strict=True) if not side]
            reason = (
                f"the prompt fills max_length {max_length}: no completion token of "
                f"{' and '.join(cut)} left"
            )
        stats.dropped_ids.append(pair.id)
        quarantine.append({"id": pair.id, "reason": reason})
        return None
    chosen, rejected = sides
    stats.kept += 1
    stats.truncated += int(chosen.truncated or rejected.truncated)
    stats.counted_tokens += chosen.counted_tokens + rejected.counted_tokens
    stats.total_tokens += len(chosen) + len(rejected)
    return TokenizedPair(pair.id, chosen, rejected)


@dataclass
class DPOBatch:
    """``n`` pairs as one padded batch of ``2n`` rows: chosen rows first, then rejected."""

    batch: Batch
    pair_ids: tuple[str, ...]
    position: DataPosition | None = None
    next_position: DataPosition | None = None

    @property
    def pairs(self) -> int:
        return len(self.pair_ids)

    def split(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row values ``(2n, …)`` → ``(chosen (n, …), rejected (n, …))``."""
        if values.shape[0] != 2 * self.pairs:
            raise ValueError(f"expected {2 * self.pairs} rows, got {values.shape[0]}")
        return values[: self.pairs], values[self.pairs :]

    def digest(self) -> str:
        return self.batch.digest()


def collate_dpo(pairs: Sequence[TokenizedPair], *, pad_id: int) -> DPOBatch:
    """Pad chosen and rejected sides of ``pairs`` into one batch (chosen rows first)."""
    batch = pad_batch([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id=pad_id)
    return DPOBatch(batch, tuple(p.id for p in pairs))


class DPOLoader(OrderedLoader):
    """Batches of ``batch_size`` preference pairs (always padded, never packed)."""

    kind = "dpo"

    def __init__(self, items: Sequence[TokenizedPair], *, pad_id: int, **kwargs) -> None:
        self.pad_id = pad_id
        settings = {"pad_id": pad_id, **kwargs.pop("settings", {})}
        super().__init__(items, settings=settings, **kwargs)

    def _collate(self, group) -> DPOBatch:
        return collate_dpo(group, pad_id=self.pad_id)
