"""Several sessions' new tokens in one forward: a ragged batch over per-session KV-caches.

A stage step of the daemon's scheduler carries, for each session in the batch, a *segment*: the
session's new positions (one decode token, or a chunk of a prompt), its own KV-cache and the
position the segment starts at. The segments' tokens are laid end to end along the sequence
axis, ``(1, total_tokens, hidden)``, so every matrix product of the decoder blocks (projections,
MLP, LoRA) runs once for the whole batch with no padding. Only attention is per segment: each
segment's queries attend to its own session's cached keys and values, through transformers' own
SDPA attention (:func:`sdpa_attention_forward`, the function the whole-model reference uses), so
a segment computes what the same session would compute alone.

This is the layout of vLLM and of transformers' continuous batching (flattened tokens, per
request KV), without transformers' paged cache: its ``PagedAttentionCache`` is owned by its
``ContinuousBatchingManager`` (requests, scheduling, block tables), while here sessions are opened,
rewound and closed by remote clients, one KV per session, and a stage holds a slice of the layers.

The attention function is registered with transformers under :data:`ATTENTION` (with SDPA's mask
function), and a stage's config names it: without a :class:`RaggedBatch` in the call it is plain
SDPA, so training and whole-sequence forwards are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "node0_ragged"
_MIN_CAPACITY = 64  # positions a session's cache starts with; it doubles as it fills
# MKL's sgemm (float32 on the CPU) computes a (m, k) x (k, n) product with m not a multiple of 4
# as if each row past the last multiple of 4 were its own matrix-vector product. Measured on this
# machine, one thread, a (m, 576) x (576, 1536) projection: m=1 98 us, 2 199, 3 295, 4 218, 5 289,
# 7 325, 8 255 us; the (m, 576) x (576, 49152) LM head: m=1 10.4 ms, 2 23.6, 3 34.7, 4 17.7, 8
# 24.6 ms. So a float32 batch of more than one row is padded to a multiple of this many rows (the
# padding rows are dropped). bfloat16 goes through oneDNN, whose cost grows smoothly with m (the
# same projection: m=1 99 us, 2 105, 3 108, 4 118, 8 160), and is not padded.
GEMM_ROW_MULTIPLE = 4


def gemm_rows(rows: int, dtype: torch.dtype = torch.float32) -> int:
    """The row count a batched product of ``rows`` rows runs with (see GEMM_ROW_MULTIPLE)."""
    if rows <= 1 or dtype != torch.float32:
        return rows
    return -(-rows // GEMM_ROW_MULTIPLE) * GEMM_ROW_MULTIPLE


class SessionKV:
    """One session's keys and values on one stage, for every layer of the stage.

    Buffers grow by doubling (amortised O(1) per appended position) up to ``max_length``; a
    rewind only moves :attr:`length`. Writes go to positions ``[length, length + n)`` of a layer
    during a forward and become part of the cache when the step commits (:meth:`commit`), so a
    forward that fails half-way leaves :attr:`length` where it was.
    """

    def __init__(self, num_layers: int, max_length: int):
        self.num_layers = num_layers
        self.max_length = max_length
        self.length = 0
        self._keys: list[torch.Tensor | None] = [None] * num_layers
        self._values: list[torch.Tensor | None] = [None] * num_layers

    def crop(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot crop a cache of {self.length} positions to {length}")
        self.length = length

    def commit(self, n_new: int) -> None:
        self.length += n_new

    def write(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``(1, kv_heads, n, head_dim)`` new keys/values; return views of all so far."""
        n = keys.shape[2]
        end = self.length + n
        buffer_k, buffer_v = self._reserve(layer, end, keys)
        buffer_k[:, :, self.length : end] = keys
        buffer_v[:, :, self.length : end] = values
        return buffer_k[:, :, :end], buffer_v[:, :, :end]

    def buffers(self, end: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every layer's key and value buffers, grown to hold positions up to ``end``.

        For a step that writes the buffers itself (:func:`write_and_attend`); the cache must
        already hold a position, which sets the buffers' shape and dtype.
        """
        if self.length == 0:
            raise ValueError("an empty cache has no buffers yet")
        for layer in range(self.num_layers):
            self._reserve(layer, end, self._keys[layer])
        return list(self._keys), list(self._values)

    def _reserve(
        self, layer: int, end: int, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's buffers, grown (doubling) to at least ``end`` positions."""
        if end > self.max_length:
            raise ValueError(f"positions up to {end} exceed the session's {self.max_length}")
        buffer_k, buffer_v = self._keys[layer], self._values[layer]
        if buffer_k is None or buffer_k.shape[2] < end:
            capacity = min(self.max_length, max(_MIN_CAPACITY, end, 2 * self._capacity(layer)))
            shape = (1, like.shape[1], capacity, like.shape[3])
            grown_k = like.new_empty(shape)
            grown_v = like.new_empty(shape)
            if buffer_k is not None:
                grown_k[:, :, : self.length] = buffer_k[:, :, : self.length]
                grown_v[:, :, : self.length] = buffer_v[:, :, : self.length]
            self._keys[layer], self._values[layer] = buffer_k, buffer_v = grown_k, grown_v
        return buffer_k, buffer_v

    def _capacity(self, layer: int) -> int:
        buffer = self._keys[layer]
        return 0 if buffer is None else buffer.shape[2]


@dataclass(frozen=True)
class Segment:
    """One session's part of a ragged batch: ``tokens`` new positions from ``kv.length``."""

    kv: SessionKV
    tokens: int


class RaggedBatch:
    """The segments of one stage forward, in the order their tokens are laid out.

    ``padding`` rows may follow the last segment's tokens (see :func:`gemm_rows`): they belong to
    no session, attend to nothing, write no cache, and their outputs are dropped.
    """

    def __init__(self, segments: list[Segment]):
        if not segments:
            raise ValueError("a batch needs at least one segment")
        self.segments = segments
        self.offsets = []
        total = 0
        for segment in segments:
            if segment.tokens < 1:
                raise ValueError("every segment brings at least one new position")
            self.offsets.append(total)
            total += segment.tokens
        self.total_tokens = total
        self.padding = 0

    def position_ids(self, device: torch.device | None = None) -> torch.Tensor:
        """``(1, total_tokens + padding)``: each token's position in its own session."""
        return torch.cat(
            [
                torch.arange(s.kv.length, s.kv.length + s.tokens, device=device)
                for s in self.segments
            ]
            + [torch.zeros(self.padding, dtype=torch.long, device=device)]
        ).unsqueeze(0)

    def last_token_indices(self) -> list[int]:
        """Index of each segment's last token along the token axis."""
        return [
            offset + s.tokens - 1 for offset, s in zip(self.offsets, self.segments, strict=True)
        ]

    def commit(self) -> None:
        for segment in self.segments:
            segment.kv.commit(segment.tokens)


def _segment_mask(
    past: int, n: int, sliding_window: int | None, device: torch.device
) -> torch.Tensor | None:
    """SDPA's boolean mask for ``n`` queries after ``past`` cached positions (None: not needed)."""
    if sliding_window is None and (n == 1 or past == 0):
        return None  # decode attends to everything; a fresh prefill is SDPA's is_causal
    query = torch.arange(past, past + n, device=device)[:, None]
    key = torch.arange(past + n, device=device)[None, :]
    allowed = key <= query
    if sliding_window is not None:
        allowed &= key > query - sliding_window
    return allowed.view(1, 1, n, past + n)


@dataclass(frozen=True)
class CacheSlots:
    """One session's cache buffers for a step that writes them in place (a compiled decode).

    ``keys[i]``/``values[i]`` are layer ``i``'s buffers (:meth:`SessionKV.buffers`); the step's
    new positions go to ``[length, length + n)``.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int


def write_and_attend(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    slots: CacheSlots,
    scaling: float | None,
    sliding_window: int | None,
) -> tuple[torch.Tensor, None]:
    """One segment's attention: store its keys/values in its buffers, attend over all so far.

    The same arithmetic as a one-segment :func:`ragged_attention`, on tensors only (no
    :class:`SessionKV` bookkeeping), so that a traced graph can hold it.
    """
    end = slots.length + key.shape[2]
    buffer_k, buffer_v = slots.keys[module.layer_idx], slots.values[module.layer_idx]
    buffer_k[:, :, slots.length : end] = key
    buffer_v[:, :, slots.length : end] = value
    out = _attend_segment(
        module, query, buffer_k[:, :, :end], buffer_v[:, :, :end], scaling, sliding_window
    )
    return out, None


def _attend_segment(
    module: torch.nn.Module,
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    scaling: float | None,
    sliding_window: int | None,
) -> torch.Tensor:
    """SDPA of one segment's ``n`` queries over its session's ``past + n`` keys and values."""
    n = query.shape[2]
    mask = _segment_mask(keys.shape[2] - n, n, sliding_window, query.device)
    out, _ = sdpa_attention_forward(module, query, keys, values, mask, dropout=0.0, scaling=scaling)
    return out  # (1, n, heads, head_dim)


def ragged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    ragged_batch: RaggedBatch | None = None,
    sliding_window: int | None = None,
    cache_slots: CacheSlots | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Per-segment SDPA over each session's own cache; plain SDPA without a ragged batch."""
    if cache_slots is not None:
        return write_and_attend(module, query, key, value, cache_slots, scaling, sliding_window)
    if ragged_batch is None:
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            sliding_window=sliding_window,
            **kwargs,
        )
    outputs = []
    for offset, segment in zip(ragged_batch.offsets, ragged_batch.segments, strict=True):
        span = slice(offset, offset + segment.tokens)
        keys, values = segment.kv.write(module.layer_idx, key[:, :, span], value[:, :, span])
        outputs.append(
            _attend_segment(module, query[:, :, span], keys, values, scaling, sliding_window)
        )
    if ragged_batch.padding:
        shape = (1, ragged_batch.padding, *outputs[0].shape[2:])
        outputs.append(outputs[0].new_zeros(shape))
    return torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0], None


AttentionInterface.register(ATTENTION, ragged_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)
