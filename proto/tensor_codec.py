"""Tensors on the wire: encode, decode and validate :class:`node0_pb2.Tensor`.

Decoding checks the declared dtype and shape against the byte count before any bytes are
interpreted, so a malformed message is refused (INVALID_ARGUMENT at the server) instead of
producing garbage or a crash.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from proto import node0_pb2

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
}
_NAMES = {v: k for k, v in DTYPES.items()}
MAX_DIMS = 4


class TensorFormatError(ValueError):
    """A wire tensor whose dtype, shape or payload is invalid."""


def encode(tensor: torch.Tensor) -> node0_pb2.Tensor:
    tensor = tensor.detach().contiguous().cpu()
    name = _NAMES.get(tensor.dtype)
    if name is None:
        raise TensorFormatError(f"dtype {tensor.dtype} cannot be sent")
    if tensor.dtype == torch.bfloat16:
        data = tensor.view(torch.int16).numpy().tobytes()
    else:
        data = tensor.numpy().tobytes()
    return node0_pb2.Tensor(dtype=name, shape=list(tensor.shape), data=data)


def decode(message: node0_pb2.Tensor) -> torch.Tensor:
    """Decode and validate; raises :class:`TensorFormatError` on any inconsistency."""
    dtype = DTYPES.get(message.dtype)
    if dtype is None:
        raise TensorFormatError(f"unknown dtype {message.dtype!r}; expected one of {list(DTYPES)}")
    shape = tuple(int(d) for d in message.shape)
    if not 1 <= len(shape) <= MAX_DIMS or any(d <= 0 for d in shape):
        raise TensorFormatError(f"invalid shape {list(shape)}")
    itemsize = torch.empty((), dtype=dtype).element_size()
    expected = math.prod(shape) * itemsize
    if len(message.data) != expected:
        raise TensorFormatError(
            f"payload has {len(message.data)} bytes; dtype {message.dtype} "
            f"and shape {list(shape)} need {expected}"
        )
    if dtype == torch.bfloat16:
        array = np.frombuffer(message.data, dtype=np.int16).reshape(shape)
        return torch.from_numpy(array.copy()).view(torch.bfloat16)
    array = np.frombuffer(message.data, dtype=torch.empty((), dtype=dtype).numpy().dtype)
    return torch.from_numpy(array.reshape(shape).copy())
