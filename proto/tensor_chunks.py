"""Large tensors on the wire as ordered chunks, reassembled with checks.

A training call streams several named tensors (activations, masks, labels, gradients). Each is
split into :class:`node0_pb2.TensorChunk` messages of at most ``chunk_bytes``; the receiver
checks that every piece repeats the same dtype and shape, that offsets are contiguous, and that
the total never exceeds the tensor's size or the receiver's limit — then decodes with the same
validation as single-message tensors.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from proto import node0_pb2
from proto.tensor_codec import DTYPES, TensorFormatError, decode, encode

DEFAULT_CHUNK_BYTES = 1 << 20


def split_tensor(
    name: str, tensor: torch.Tensor, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[node0_pb2.TensorChunk]:
    whole = encode(tensor)
    data = whole.data
    for offset in range(0, max(len(data), 1), chunk_bytes):
        yield node0_pb2.TensorChunk(
            name=name,
            dtype=whole.dtype,
            shape=whole.shape,
            offset=offset,
            data=data[offset : offset + chunk_bytes],
        )


class TensorAssembler:
    """Collect chunks of named tensors; ``tensors()`` returns them decoded and validated."""

    def __init__(self, max_total_bytes: int):
        self.max_total_bytes = max_total_bytes
        self._parts: dict[str, tuple[str, tuple[int, ...], bytearray]] = {}
        self._total = 0

    def add(self, chunk: node0_pb2.TensorChunk) -> None:
        if not chunk.name:
            raise TensorFormatError("tensor chunk without a name")
        shape = tuple(int(d) for d in chunk.shape)
        entry = self._parts.get(chunk.name)
        if entry is None:
            if chunk.dtype not in DTYPES:
                raise TensorFormatError(f"{chunk.name}: unknown dtype {chunk.dtype!r}")
            entry = (chunk.dtype, shape, bytearray())
            self._parts[chunk.name] = entry
        dtype, expected_shape, buffer = entry
        if chunk.dtype != dtype or shape != expected_shape:
            raise TensorFormatError(f"{chunk.name}: chunks disagree on dtype/shape")
        if chunk.offset != len(buffer):
            raise TensorFormatError(
                f"{chunk.name}: chunk at offset {chunk.offset}, expected "
                f"{len(buffer)} (chunks out of order or missing)"
            )
        itemsize = torch.empty((), dtype=DTYPES[dtype]).element_size()
        size = math.prod(shape) * itemsize if shape else 0
        if len(buffer) + len(chunk.data) > size:
            raise TensorFormatError(f"{chunk.name}: more bytes than shape {list(shape)} holds")
        self._total += len(chunk.data)
        if self._total > self.max_total_bytes:
            raise TensorFormatError(f"request carries more than {self.max_total_bytes} bytes")
        buffer.extend(chunk.data)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            name: decode(node0_pb2.Tensor(dtype=dtype, shape=shape, data=bytes(buffer)))
            for name, (dtype, shape, buffer) in self._parts.items()
        }
