"""Tensors on the wire: encode, decode and validate :class:`node0_pb2.Tensor`.

Decoding checks the declared dtype and shape against the byte count before any bytes are
interpreted, so a malformed message is refused (INVALID_ARGUMENT at the server) instead of
producing garbage or a crash.

Both directions copy the payload as few times as the protobuf runtime allows, because a
prefill's hidden states are megabytes (a 1,000-token SmolLM2 prompt: 2.3 MB per hop): encoding
makes the one ``bytes`` object protobuf needs and can write it straight into the field of the
request or response being built (``into``); decoding returns a tensor over the message's payload
without copying it (see :func:`decode`). Measurements: BENCHMARKS.md (per-hop time).
"""

from __future__ import annotations

import math
import warnings

import torch
from google.protobuf.internal import api_implementation

from proto import node0_pb2

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
}
_NAMES = {v: k for k, v in DTYPES.items()}
MAX_DIMS = 4

# upb (protobuf's default runtime) hands out a new ``bytes`` object on every read of a bytes
# field, so a tensor viewing it shares memory with nothing else; the pure-Python runtime returns
# the object the message was built from, which may be the caller's, so it gets a copy.
_PRIVATE_PAYLOAD = api_implementation.Type() == "upb"
# torch warns (once) that a tensor over ``bytes`` could write into it; see decode
warnings.filterwarnings(
    "ignore", message="The given buffer is not writable", category=UserWarning, module=__name__
)


class TensorFormatError(ValueError):
    """A wire tensor whose dtype, shape or payload is invalid."""


def encode(tensor: torch.Tensor, into: node0_pb2.Tensor | None = None) -> node0_pb2.Tensor:
    """The wire form of ``tensor`` (one copy of its bytes, the ``bytes`` protobuf takes).

    Args:
        tensor: any shape and one of :data:`DTYPES`; moved to the CPU and made contiguous.
        into: fill this message (a field of the request or response being built, e.g.
            ``encode(x, into=request.input)``) instead of a new one that the caller would then
            copy in with ``CopyFrom`` or a constructor argument.

    Raises:
        TensorFormatError: a dtype that cannot be sent.
    """
    name = _NAMES.get(tensor.dtype)
    if name is None:
        raise TensorFormatError(f"dtype {tensor.dtype} cannot be sent")
    tensor = tensor.detach().cpu().contiguous()
    # numpy has no bfloat16: reinterpret as int16, same bytes
    array = (tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor).numpy()
    if into is None:
        return node0_pb2.Tensor(dtype=name, shape=tensor.shape, data=array.tobytes())
    into.Clear()
    into.dtype = name
    into.shape.extend(tensor.shape)
    into.data = array.tobytes()
    return into


def decode(message: node0_pb2.Tensor) -> torch.Tensor:
    """Decode and validate; raises :class:`TensorFormatError` on any inconsistency.

    The tensor is a view of the message's payload, not a copy (under upb that ``bytes`` object
    is the tensor's alone). Torch cannot mark it read-only; writing into it in place works
    but changes that ``bytes`` object, so a caller that keeps the message and needs its payload
    unchanged clones the tensor first.
    """
    dtype = DTYPES.get(message.dtype)
    if dtype is None:
        raise TensorFormatError(f"unknown dtype {message.dtype!r}; expected one of {list(DTYPES)}")
    shape = tuple(message.shape)
    if not 1 <= len(shape) <= MAX_DIMS or any(d <= 0 for d in shape):
        raise TensorFormatError(f"invalid shape {list(shape)}")
    data = message.data
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise TensorFormatError(
            f"payload has {len(data)} bytes; dtype {message.dtype} "
            f"and shape {list(shape)} need {expected}"
        )
    tensor = torch.frombuffer(data if _PRIVATE_PAYLOAD else bytearray(data), dtype=dtype)
    return tensor.view(shape)
