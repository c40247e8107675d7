"""Wire formats of averaged gradient parts (:attr:`lora.config.AveragingSettings.compression`).

- ``none``: float32, 4 bytes a value.
- ``float16``: hivemind's ``Float16Compression``, 2 bytes a value.
- ``int8``: :class:`BlockwiseInt8`, blockwise absmax int8 (INTELLECT-1's int8 all-reduce
  idea): blocks of :data:`BLOCK` values, each sent as a float16 scale (its largest magnitude)
  and one signed byte a value, ``round(127 x / scale)``; 1.002 bytes a value. Parts under
  :data:`INT8_MIN_NUMEL` values go as float16. :class:`~lora.averaging.StageGradientAverager`
  averages the adapter gradients as one flat tensor under ``int8`` so that parts are large.

Why not hivemind's own 8-bit codecs: ``Uniform8BitQuantization`` bins over ±3 standard
deviations of the whole part and ``Quantile8BitQuantization`` by quantiles, each with one
256-entry codebook; on adapter gradients (tensors whose scales differ by orders of magnitude,
lora_A's gradient all zeros at the start) they lost 29 % and 13 % of the vector's L2 norm in
a test, where blockwise absmax loses under 1 %. ``BlockwiseQuantization`` needs bitsandbytes
(not installed). And hivemind 1.1.12's 8-bit *decoder* does not run under NumPy 2 (``int()``
of a one-element array raises ``TypeError``): a receiver failed on every 8-bit part and the
all-reduce silently kept local values ("received 0.0% results").

hivemind decodes by the type id in each message, from a fixed table
(``hivemind.compression.serialization``). :func:`install_codecs` registers
:class:`BlockwiseInt8` under ``BLOCKWISE_8BIT`` (whose bitsandbytes implementation cannot run
here) and fixed decoders for hivemind's two 8-bit formats; it runs when this module is imported
(:mod:`lora.averaging` imports it), before the averager process is forked, so every node0 peer
encodes and decodes the same way.
"""

from __future__ import annotations

import numpy as np
import torch
from hivemind.compression import (
    CompressionBase,
    CompressionInfo,
    Float16Compression,
    NoCompression,
    Quantile8BitQuantization,
    SizeAdaptiveCompression,
    Uniform8BitQuantization,
)
from hivemind.compression import serialization as _serialization
from hivemind.proto import runtime_pb2

INT8_MIN_NUMEL = 1024  # int8 parts with fewer values travel as float16
BLOCK = 1024  # values per int8 block (one float16 scale each)
COMPRESSIONS = ("none", "float16", "int8")


class _FixedDecode:
    """hivemind's ``Quantization.extract`` with the codebook size read as a scalar."""

    def extract(self, serialized_tensor: runtime_pb2.Tensor) -> torch.Tensor:
        buffer = serialized_tensor.buffer
        codebook_size = int(np.frombuffer(buffer, count=1, dtype=np.int64)[0])
        codebook = np.frombuffer(buffer, offset=8, count=codebook_size, dtype=self.codebook_dtype)
        quantized = np.frombuffer(buffer, offset=8 + codebook.nbytes, dtype=self.indices_dtype)
        quantized = torch.as_tensor(quantized, dtype=torch.int64).reshape(
            tuple(serialized_tensor.size)
        )
        codebook = torch.as_tensor(codebook).to(dtype=getattr(torch, serialized_tensor.dtype))
        return codebook[quantized].requires_grad_(serialized_tensor.requires_grad)


class Uniform8Bit(_FixedDecode, Uniform8BitQuantization):
    """hivemind's ``Uniform8BitQuantization``, decodable under NumPy 2."""


class Quantile8Bit(_FixedDecode, Quantile8BitQuantization):
    """hivemind's ``Quantile8BitQuantization``, decodable under NumPy 2."""


class BlockwiseInt8(CompressionBase):
    """Blockwise absmax int8: ``int64 block | float16 scales[n_blocks] | int8 values[n]``."""

    compression_type = runtime_pb2.BLOCKWISE_8BIT

    def compress(
        self, tensor: torch.Tensor, info: CompressionInfo, allow_inplace: bool = False
    ) -> runtime_pb2.Tensor:
        flat = tensor.detach().reshape(-1).to(torch.float32)
        n_blocks = -(-flat.numel() // BLOCK)
        padded = torch.zeros(n_blocks * BLOCK, dtype=torch.float32)
        padded[: flat.numel()] = flat
        blocks = padded.view(n_blocks, BLOCK)
        # float16 scales, rounded up so that no value exceeds ±127 after division
        scales = blocks.abs().amax(dim=1).to(torch.float16)
        scales = torch.where(
            scales.float() < blocks.abs().amax(dim=1), torch.nextafter(scales, scales + 1), scales
        )
        safe = scales.float().clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(1)
        values = torch.round(blocks / safe * 127).clamp_(-127, 127).to(torch.int8)
        return runtime_pb2.Tensor(
            compression=self.compression_type,
            buffer=b"".join(
                (
                    np.int64(BLOCK).tobytes(),
                    scales.numpy().tobytes(),
                    values.reshape(-1)[: flat.numel()].numpy().tobytes(),
                )
            ),
            size=tensor.shape,
            dtype=tensor.data.numpy().dtype.name if tensor.dtype != torch.bfloat16 else "bfloat16",
            requires_grad=tensor.requires_grad,
        )

    def extract(self, serialized_tensor: runtime_pb2.Tensor) -> torch.Tensor:
        buffer = serialized_tensor.buffer
        block = int(np.frombuffer(buffer, count=1, dtype=np.int64)[0])
        numel = int(np.prod(tuple(serialized_tensor.size), dtype=np.int64))
        n_blocks = -(-numel // block)
        scales = np.frombuffer(buffer, offset=8, count=n_blocks, dtype=np.float16)
        values = np.frombuffer(buffer, offset=8 + scales.nbytes, count=numel, dtype=np.int8)
        padded = torch.zeros(n_blocks * block, dtype=torch.float32)
        padded[:numel] = torch.as_tensor(values.astype(np.float32))
        out = padded.view(n_blocks, block) * torch.as_tensor(scales.astype(np.float32))[:, None]
        out = out.reshape(-1)[:numel].reshape(tuple(serialized_tensor.size)) / 127
        dtype = getattr(torch, serialized_tensor.dtype)
        return out.to(dtype).requires_grad_(serialized_tensor.requires_grad)

    def estimate_compression_ratio(self, info: CompressionInfo) -> float:
        return (1 + 2 / BLOCK) / torch.finfo(info.descriptor.dtype).bits * 8


def install_codecs() -> None:
    """Register :class:`BlockwiseInt8` and the fixed 8-bit decoders (idempotent)."""
    table = _serialization._BASE_COMPRESSION_TYPES
    table["BLOCKWISE_8BIT"] = BlockwiseInt8()
    table["UNIFORM_8BIT"] = Uniform8Bit()
    table["QUANTILE_8BIT"] = Quantile8Bit()


def wire_compression(name: str):
    """hivemind's compression object for a compression name of :data:`COMPRESSIONS`."""
    if name == "none":
        return NoCompression()
    if name == "float16":
        return Float16Compression()
    if name == "int8":
        return SizeAdaptiveCompression(
            INT8_MIN_NUMEL, less=Float16Compression(), greater_equal=BlockwiseInt8()
        )
    raise ValueError(f"unknown compression {name!r}; one of {', '.join(COMPRESSIONS)}")


install_codecs()
