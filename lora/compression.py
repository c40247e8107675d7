"""Wire formats of averaged gradient parts (:attr:`lora.config.AveragingSettings.compression`).

- ``none``: float32, 4 bytes a value.
- ``float16``: hivemind's ``Float16Compression``, 2 bytes a value.
- ``int8``: :class:`BlockwiseInt8`, blockwise absmax int8 (INTELLECT-1's int8 all-reduce
  idea): blocks of :data:`BLOCK` values, each sent as a float16 scale (its largest magnitude)
  and one signed byte a value, ``round(127 x / scale)``; 1.002 bytes a value. Parts under
  :data:`INT8_MIN_NUMEL` values go as float16. :class:`~lora.averaging.StageGradientAverager`
  averages the adapter gradients as one flat tensor under ``int8`` so that parts are large.
- ``int4``: the same codec (:class:`BlockwiseQuantized`) at 4 bits: blocks of
  :data:`INT4_BLOCK` values, 15 levels ``round(7 x / scale)``, two values a byte; 0.508 bytes a
  value, 0.127 of float32. int8's payload is 0.2505 of float32 (its scales), so with the round's
  fixed traffic (matchmaking, DHT records, TCP acks) int8 alone cannot bring a round's wire bytes
  to a quarter of float32's; int4 does (docs/wan.md). Why not PowerSGD for this: a LoRA
  gradient is a thin matrix (rank r x width d, r = 16 here), and a rank-q PowerSGD factor pair
  sends ``q (r + d)`` of its ``r d`` values: 0.26 of them at q = 4, with two all-reduce phases
  (two more round trips) a round and a gradient that keeps only 4 of its 16 directions.

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

INT8_MIN_NUMEL = 1024  # int8 / int4 parts with fewer values travel as float16
BLOCK = 1024  # values per int8 block (one float16 scale each)
INT4_BLOCK = 256  # values per int4 block: 15 levels need a tighter scale than 255
COMPRESSIONS = ("none", "float16", "int8", "int4")
QUANTIZED = ("int8", "int4")  # blockwise: averaged as one flat tensor, shared results


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


class BlockwiseQuantized(CompressionBase):
    """Blockwise absmax quantization to ``bits`` (8 or 4) signed bits a value.

    Wire format: ``int64 header | float16 scales[n_blocks] | values``, the header holding the
    block size, plus ``bits << 32`` for 4 bits (an 8-bit header is the block size alone, the
    format :class:`BlockwiseInt8` always had). Each value is ``round(levels x / scale)`` with
    ``levels = 2 ** (bits - 1) - 1`` (127 or 7); 4-bit values are packed two to a byte (low
    nibble first, offset by 8). Encoding a decoded tensor again gives it back exactly (the
    shared-result reducer relies on it: :mod:`lora.shared_results`).
    """

    compression_type = runtime_pb2.BLOCKWISE_8BIT

    def __init__(self, bits: int = 8, block: int | None = None):
        if bits not in (8, 4):
            raise ValueError(f"blockwise quantization to {bits} bits: 8 or 4 only")
        self.bits = bits
        self.block = block or (BLOCK if bits == 8 else INT4_BLOCK)

    def compress(
        self, tensor: torch.Tensor, info: CompressionInfo, allow_inplace: bool = False
    ) -> runtime_pb2.Tensor:
        flat = tensor.detach().reshape(-1).to(torch.float32)
        n_blocks = -(-flat.numel() // self.block)
        padded = torch.zeros(n_blocks * self.block, dtype=torch.float32)
        padded[: flat.numel()] = flat
        blocks = padded.view(n_blocks, self.block)
        # float16 scales, rounded up so that no value exceeds ±levels after division
        scales = blocks.abs().amax(dim=1).to(torch.float16)
        scales = torch.where(
            scales.float() < blocks.abs().amax(dim=1), torch.nextafter(scales, scales + 1), scales
        )
        levels = _levels(self.bits)
        safe = scales.float().clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(1)
        values = torch.round(blocks / safe * levels).clamp_(-levels, levels).to(torch.int8)
        values = values.reshape(-1)[: flat.numel()]
        header = self.block if self.bits == 8 else self.block | (self.bits << 32)
        return runtime_pb2.Tensor(
            compression=self.compression_type,
            buffer=b"".join(
                (np.int64(header).tobytes(), scales.numpy().tobytes(), _pack(values, self.bits))
            ),
            size=tensor.shape,
            dtype=tensor.data.numpy().dtype.name if tensor.dtype != torch.bfloat16 else "bfloat16",
            requires_grad=tensor.requires_grad,
        )

    def extract(self, serialized_tensor: runtime_pb2.Tensor) -> torch.Tensor:
        buffer = serialized_tensor.buffer
        header = int(np.frombuffer(buffer, count=1, dtype=np.int64)[0])
        block, bits = header & 0xFFFFFFFF, (header >> 32) or 8
        if bits not in (8, 4) or block < 1:
            raise ValueError(f"not a blockwise quantized part (header {header:#x})")
        numel = int(np.prod(tuple(serialized_tensor.size), dtype=np.int64))
        n_blocks = -(-numel // block)
        scales = np.frombuffer(buffer, offset=8, count=n_blocks, dtype=np.float16)
        values = _unpack(buffer[8 + scales.nbytes :], numel, bits)
        padded = torch.zeros(n_blocks * block, dtype=torch.float32)
        padded[:numel] = values
        out = padded.view(n_blocks, block) * torch.as_tensor(scales.astype(np.float32))[:, None]
        out = out.reshape(-1)[:numel].reshape(tuple(serialized_tensor.size)) / _levels(bits)
        dtype = getattr(torch, serialized_tensor.dtype)
        return out.to(dtype).requires_grad_(serialized_tensor.requires_grad)

    def estimate_compression_ratio(self, info: CompressionInfo) -> float:
        return (self.bits / 8 + 2 / self.block) / torch.finfo(info.descriptor.dtype).bits * 8


class BlockwiseInt8(BlockwiseQuantized):
    """Blockwise absmax int8: ``int64 block | float16 scales[n_blocks] | int8 values[n]``."""

    def __init__(self):
        super().__init__(bits=8)


def _levels(bits: int) -> int:
    return (1 << (bits - 1)) - 1


def _pack(values: torch.Tensor, bits: int) -> bytes:
    """int8 values in ±levels as bytes: one a byte (8 bits), or two (4 bits, offset by 8)."""
    if bits == 8:
        return values.numpy().tobytes()
    nibbles = (values.to(torch.int16) + 8).to(torch.uint8)
    if nibbles.numel() % 2:
        nibbles = torch.cat([nibbles, torch.full((1,), 8, dtype=torch.uint8)])
    pairs = nibbles.view(-1, 2)
    return (pairs[:, 0] | (pairs[:, 1] << 4)).numpy().tobytes()


def _unpack(buffer: bytes, numel: int, bits: int) -> torch.Tensor:
    """The values of :func:`_pack` as float32."""
    if bits == 8:
        return torch.as_tensor(np.frombuffer(buffer, count=numel, dtype=np.int8).astype(np.float32))
    packed = torch.as_tensor(np.frombuffer(buffer, count=-(-numel // 2), dtype=np.uint8).copy())
    nibbles = torch.stack([packed & 0xF, packed >> 4], dim=1).reshape(-1)[:numel]
    return nibbles.to(torch.float32) - 8


def install_codecs() -> None:
    """Register :class:`BlockwiseQuantized` (it decodes 8 and 4 bits by the part's header) and
    the fixed 8-bit decoders (idempotent)."""
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
    if name in QUANTIZED:
        return SizeAdaptiveCompression(
            INT8_MIN_NUMEL,
            less=Float16Compression(),
            greater_equal=BlockwiseQuantized(bits=8 if name == "int8" else 4),
        )
    raise ValueError(f"unknown compression {name!r}; one of {', '.join(COMPRESSIONS)}")


install_codecs()
