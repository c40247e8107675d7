"""Lossy averaging whose result is the same on every replica (``compression: int8`` or ``int4``).

In hivemind's all-reduce a reducer sends each sender the *difference* between the averaged part
and that sender's part, compressed: a sender ends with ``own + Q(avg − own)``, the reducer with
``avg``. Under int8 every member's result then differs from the others' by its own quantization
error (about 1 % of the difference), AdamW turns that into different updates, and the replicas'
states drift apart until :class:`~lora.averaging.StageGradientAverager` resyncs them: a full
download of adapter and optimizer state every round, several times the bytes int8 saved
(measured: ~1.3 MB a round for a 107,520-value adapter whose int8 payload was 0.22 MB).

:class:`SharedResultAverager` runs the same guarded all-reduce, but a reducer rounds each
averaged part once through the wire format (``R = decode(encode(avg))``, on the int8 grid),
keeps ``R`` for itself and sends ``R`` — the value, not a difference — to every sender, which
takes it as its result. Encoding ``R`` again gives ``R`` exactly (blockwise absmax is
idempotent), so every member ends with the same ``R`` up to one float32 rounding of
``own + (R − own)``, and the bytes are those of int8 deltas. The defences on arrival
(:mod:`lora.allreduce_guard`) are unchanged: parts are checked before they are averaged.
Every replica of a run uses it or none does (the compression setting is part of the
configuration fingerprint).
"""

from __future__ import annotations

from typing import AsyncIterator  # noqa: UP035 (hivemind reads typing's AsyncIterator)

import torch
from hivemind.averaging.partition import BannedException
from hivemind.compression import CompressionInfo, deserialize_torch_tensor
from hivemind.proto import averaging_pb2
from hivemind.utils.asyncio import amap_in_executor

from lora.allreduce_guard import GuardedReplicaAverager, _GuardedRunner

_decode_local = deserialize_torch_tensor  # not a received part (counters wrap the other name)


def on_grid(compression, part: torch.Tensor) -> torch.Tensor:
    """``part`` encoded and decoded with ``compression`` (what every receiver would decode)."""
    return _decode_local(compression.compress(part, CompressionInfo.from_tensor(part)))


def _decode_received(serialized):
    return deserialize_torch_tensor(serialized)  # looked up at call time (bench counters)


class _SharedResultRunner(_GuardedRunner):
    """A guarded runner whose reducers return the rounded average itself (see module doc)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        compression = self.tensor_part_container.compression
        reducer, container = self.tensor_part_reducer, self.tensor_part_container
        accumulate = reducer.accumulate_part

        async def accumulate_on_grid(sender_index, part_index, tensor_part, weight=1.0):
            averaged = await accumulate(sender_index, part_index, tensor_part, weight=weight)
            return on_grid(compression, averaged)  # deterministic: the same R for every caller

        reducer.accumulate_part = accumulate_on_grid
        me = self.ordered_peer_ids.index(self.peer_id)
        register, fail = container.register_processed_part, container.register_failed_reducer
        failing = []

        def register_result(peer_index: int, part_index: int, part: torch.Tensor) -> None:
            if peer_index != me and not failing:  # a reducer sent R: our delta is R − own
                part = part - container._input_parts_by_peer[peer_index][part_index][0]
            register(peer_index, part_index, part)

        def register_failed(peer_index: int) -> None:
            failing.append(peer_index)  # hivemind registers zero deltas: keep them
            try:
                fail(peer_index)
            finally:
                failing.pop()

        container.register_processed_part = register_result
        container.register_failed_reducer = register_failed

    async def _accumulate_parts_streaming(
        self, stream: AsyncIterator[averaging_pb2.AveragingData], sender_index: int
    ):
        # hivemind's method, sending the rounded average R instead of R − sender's part
        part_index = 0
        try:
            async for tensor_part, weight in amap_in_executor(
                lambda msg: (_decode_received(msg.tensor_part), msg.weight),
                stream,
                max_prefetch=self.tensor_part_container.prefetch,
            ):
                try:
                    averaged_part = await self.tensor_part_reducer.accumulate_part(
                        sender_index, part_index, tensor_part, weight=weight
                    )
                    part_index += 1
                except BannedException:
                    break  # the sender was banned: its parts are no longer averaged
                # with the run's compression object, not the part's type id: BLOCKWISE_8BIT
                # names the codec, whose table entry encodes 8 bits (int4 would come back int8)
                serialized = self.tensor_part_container.compression.compress(
                    averaged_part, CompressionInfo.from_tensor(averaged_part)
                )
                yield averaging_pb2.AveragingData(
                    code=averaging_pb2.AVERAGED_PART, tensor_part=serialized
                )
        finally:
            if part_index != self.tensor_part_reducer.num_parts:
                await self._ban_sender(self.sender_peer_ids[sender_index])


class SharedResultAverager(GuardedReplicaAverager):
    """:class:`~lora.allreduce_guard.GuardedReplicaAverager` with :class:`_SharedResultRunner`."""

    runner_type = _SharedResultRunner
