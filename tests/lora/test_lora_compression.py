"""The int8 wire format of averaged gradients (lora/compression.py) and the DiLoCo outer step."""

from __future__ import annotations

import pytest
import torch
from hivemind.compression import CompressionInfo, deserialize_torch_tensor, serialize_torch_tensor
from hivemind.proto import runtime_pb2

from lora.compression import BlockwiseQuantized, Uniform8Bit, wire_compression
from lora.diloco import DiLoCoOuter
from lora.shared_results import on_grid


def gradient_like(seed: int = 0) -> torch.Tensor:
    """Adapter-gradient-like: a zero block (lora_A at init) and tensors of very different scale."""
    generator = torch.Generator().manual_seed(seed)
    parts = [torch.zeros(20_000)]
    for k in range(12):
        parts.append(torch.randn(3000, generator=generator) * 10.0 ** (-k % 4))
    return torch.cat(parts)


def test_blockwise_int8_keeps_adapter_gradients_within_one_percent_at_a_quarter_of_the_bytes():
    x = gradient_like()
    serialized = serialize_torch_tensor(x, runtime_pb2.BLOCKWISE_8BIT)
    y = deserialize_torch_tensor(serialized)  # through hivemind's table, as the all-reduce does
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float((y - x).norm() / x.norm()) < 0.01
    assert bool((y[:20_000] == 0).all())  # zeros stay exactly zero
    assert serialized.ByteSize() <= 0.251 * x.numel() * 4  # 1 byte a value + 2 a block
    # hivemind's uniform 8-bit codec on the same vector: one codebook for all scales
    uniform = Uniform8Bit()
    u = uniform.extract(uniform.compress(x, CompressionInfo.from_tensor(x)))
    assert float((u - x).norm() / x.norm()) > 0.1


def test_blockwise_int4_halves_int8_and_its_decoded_values_encode_to_themselves():
    x = gradient_like(1)[:-1]  # an odd count: the last byte holds one value
    compression = wire_compression("int4")
    serialized = compression.compress(x, CompressionInfo.from_tensor(x))
    assert serialized.compression == runtime_pb2.BLOCKWISE_8BIT
    y = deserialize_torch_tensor(serialized)  # hivemind's table reads the bits from the header
    assert y.shape == x.shape
    assert float((y - x).norm() / x.norm()) < 0.15  # 15 levels a block of 256
    assert bool((y[:20_000] == 0).all())
    assert serialized.ByteSize() <= 0.128 * x.numel() * 4  # half a byte a value + 2 a block
    # the shared-result reducer sends decode(encode(avg)); encoding it again changes nothing
    assert torch.equal(on_grid(compression, y), y)
    # int8 parts keep their format (header = block size alone) and decode as before
    z = deserialize_torch_tensor(serialize_torch_tensor(x, runtime_pb2.BLOCKWISE_8BIT))
    assert float((z - x).norm() / x.norm()) < 0.01


def test_blockwise_decoder_refuses_a_header_it_does_not_know():
    x = torch.randn(4096)
    serialized = BlockwiseQuantized(bits=4).compress(x, CompressionInfo.from_tensor(x))
    serialized.buffer = (3 << 32 | 256).to_bytes(8, "little") + serialized.buffer[8:]
    with pytest.raises(ValueError, match="not a blockwise quantized part"):
        deserialize_torch_tensor(serialized)


def test_int8_setting_sends_small_parts_as_float16():
    compression = wire_compression("int8")
    small, large = torch.randn(100), torch.randn(5000)
    assert (
        compression.compress(small, CompressionInfo.from_tensor(small)).compression
        == runtime_pb2.FLOAT16
    )
    assert (
        compression.compress(large, CompressionInfo.from_tensor(large)).compression
        == runtime_pb2.BLOCKWISE_8BIT
    )
    assert isinstance(compression.greater_equal, BlockwiseQuantized)
    assert compression.greater_equal.bits == 8


def test_diloco_outer_step_applies_the_averaged_pseudo_gradient_with_nesterov_sgd():
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    outer = DiLoCoOuter([param], local_steps=2, outer_lr=0.5, outer_momentum=0.9)
    inner = torch.optim.SGD([param], lr=0.1)
    for _ in range(2):
        param.grad = torch.tensor([1.0, 1.0])
        inner.step()
        due = outer.note_inner_step()
    assert due
    seen = {}

    def average():  # another replica's pseudo-gradient was [0.4, 0.0]: the mean
        seen["pseudo"] = param.grad.clone()
        seen["start"] = param.detach().clone()
        param.grad = (param.grad + torch.tensor([0.4, 0.0])) / 2
        return "report"

    assert outer.outer_step(average) == "report"
    assert torch.allclose(seen["pseudo"], torch.tensor([0.2, 0.2]))  # θ_outer − θ_local
    assert torch.equal(seen["start"], torch.tensor([1.0, -2.0]))  # the round sees θ_outer
    g = torch.tensor([0.3, 0.1])  # the mean; Nesterov's first step: lr · (g + momentum · g)
    assert torch.allclose(param.detach(), torch.tensor([1.0, -2.0]) - 0.5 * (g + 0.9 * g))
