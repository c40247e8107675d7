"""Batches: right padding, or packing several examples into fixed-length rows.

Both produce a :class:`Batch` with ``input_ids``, ``attention_mask``, ``labels``,
``position_ids`` and ``segment_ids`` (1, 2, … per example within a row, 0 on padding).

**Padding**: one example per row, right-padded to the longest row of the batch with the pad id;
``attention_mask`` is 0 and ``labels`` are -100 on padding. Positions are 0, 1, … per row.

**Packing**: examples are laid into rows of exactly ``max_length`` tokens, in order, first fit
without splitting an example (an example that does not fit the rest of the current row starts a
new one; the tail of a row is padding). Packed examples do **not** attend to each other when
the consumer uses :meth:`Batch.attention_bias` (a block-diagonal causal mask) and
``position_ids`` (restarting at 0 for each example): then every example gets exactly the
logits it would get alone, and the per-example losses equal the padded ones (tested). A
consumer that only passes the 2D ``attention_mask`` would let packed examples attend across
their boundaries — don't. The first token of every example is never counted (label -100), so no
loss term predicts one example from the previous one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dataload.losses import IGNORE_INDEX
from dataload.order import DataPosition
from dataload.tokenization import TokenizedExample


@dataclass
class Batch:
    """A collated batch of token rows. All tensors are ``(batch, seq)`` int64."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    segment_ids: torch.Tensor
    example_ids: tuple[str, ...]
    """Ids of the examples in the batch, in row-major order."""
    packed: bool
    position: DataPosition | None = None
    """Where this batch sits in the data (set by the loader)."""
    next_position: DataPosition | None = None
    """The position to save once this batch has been trained on (set by the loader)."""

    @property
    def counted_tokens(self) -> int:
        """Labelled tokens the (shifted) loss counts."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    def attention_bias(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Additive attention mask ``(batch, 1, seq, seq)``: 0 where a query may attend, else min.

        A query attends to earlier-or-same positions of its own example (block-diagonal causal).
        Padding queries attend to themselves only, so no row is fully masked. Accepted by
        transformers' LLaMA as a custom 4D ``attention_mask`` (eager and sdpa).
        """
        seg = self.segment_ids
        seq = seg.shape[1]
        causal = torch.ones(seq, seq, dtype=torch.bool).tril()
        same = seg[:, :, None] == seg[:, None, :]  # (batch, query, key)
        allowed = same & causal & (seg[:, :, None] != 0)
        allowed |= torch.eye(seq, dtype=torch.bool)
        bias = torch.zeros(allowed.shape, dtype=dtype)
        bias.masked_fill_(~allowed, torch.finfo(dtype).min)
        return bias[:, None]

    def digest(self) -> str:
        """sha256 over the tensors' bytes and the example ids: equal digests, equal batches."""
        h = hashlib.sha256(",".join(self.example_ids).encode())
        for t in (
            self.input_ids,
            self.attention_mask,
            self.labels,
            self.position_ids,
            self.segment_ids,
        ):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()


def pad_batch(examples: Sequence[TokenizedExample], *, pad_id: int) -> Batch:
    """One example per row, right-padded to the longest."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    width = max(len(e) for e in examples)
    n = len(examples)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    for row, e in enumerate(examples):
        input_ids[row, : len(e)] = torch.tensor(e.input_ids, dtype=torch.long)
        labels[row, : len(e)] = torch.tensor(e.labels, dtype=torch.long)
        attention[row, : len(e)] = 1
    positions = torch.arange(width, dtype=torch.long).expand(n, width).clone()
    return Batch(
        input_ids,
        attention,
        labels,
        positions,
        attention.clone(),
        tuple(e.id for e in examples),
        packed=False,
    )


def pack_rows(
    examples: Sequence[TokenizedExample], max_length: int
) -> list[list[TokenizedExample]]:
    """Group examples, in order, into rows of at most ``max_length`` tokens (first fit)."""
    rows: list[list[TokenizedExample]] = []
    used = max_length
    for e in examples:
        if len(e) > max_length:
            raise ValueError(
                f"example {e.id} has {len(e)} tokens > max_length {max_length}; "
                "truncate before packing"
            )
        if used + len(e) > max_length:
            rows.append([])
            used = 0
        rows[-1].append(e)
        used += len(e)
    return rows


def pack_batch(
    rows: Sequence[Sequence[TokenizedExample]], *, pad_id: int, max_length: int
) -> Batch:
    """Collate packed rows into ``(len(rows), max_length)`` tensors."""
    if not rows:
        raise ValueError("cannot collate an empty batch")
    n = len(rows)
    input_ids = torch.full((n, max_length), pad_id, dtype=torch.long)
    labels = torch.full((n, max_length), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((n, max_length), dtype=torch.long)
    positions = torch.zeros((n, max_length), dtype=torch.long)
    segments = torch.zeros((n, max_length), dtype=torch.long)
    ids: list[str] = []
    for row, members in enumerate(rows):
        start = 0
        for number, e in enumerate(members, start=1):
            end = start + len(e)
            input_ids[row, start:end] = torch.tensor(e.input_ids, dtype=torch.long)
            labels[row, start:end] = torch.tensor(e.labels, dtype=torch.long)
            labels[row, start] = IGNORE_INDEX  # never predict an example from its predecessor
            attention[row, start:end] = 1
            positions[row, start:end] = torch.arange(len(e))
            segments[row, start:end] = number
            ids.append(e.id)
            start = end
        if start < max_length:  # padding continues the positions, as with right padding
            positions[row, start:] = torch.arange(max_length - start)
    return Batch(input_ids, attention, labels, positions, segments, tuple(ids), packed=True)
