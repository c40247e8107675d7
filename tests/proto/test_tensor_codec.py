import pytest
import torch

from proto import node0_pb2
from proto.tensor_codec import TensorFormatError, decode, encode


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64])
def test_round_trip(dtype):
    tensor = (torch.randn(1, 3, 5) * 100).to(dtype)
    back = decode(encode(tensor))
    assert back.dtype == dtype and back.shape == tensor.shape
    assert torch.equal(back, tensor)


@pytest.mark.parametrize(
    "message, match",
    [
        (node0_pb2.Tensor(dtype="float64", shape=[1], data=b"\0" * 8), "unknown dtype"),
        (node0_pb2.Tensor(dtype="float32", shape=[2, 2], data=b"\0" * 12), "need 16"),
        (node0_pb2.Tensor(dtype="float32", shape=[], data=b""), "invalid shape"),
        (node0_pb2.Tensor(dtype="float32", shape=[1, -4], data=b""), "invalid shape"),
        (node0_pb2.Tensor(dtype="int64", shape=[1, 1, 1, 1, 1], data=b"\0" * 8), "invalid shape"),
    ],
)
def test_malformed_tensors_are_refused(message, match):
    with pytest.raises(TensorFormatError, match=match):
        decode(message)
