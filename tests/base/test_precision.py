"""Devices and dtypes fail closed: no CUDA means exit code 11, never a CPU fallback."""

from __future__ import annotations

import pytest
import torch

from base.errors import ConfigError, DeviceError, ExitCode
from base.precision import (
    accepted_inputs,
    check_fits,
    dtype_name,
    resolve_device,
    torch_dtype,
)


def test_dtype_names_round_trip_and_an_unknown_one_is_a_config_error():
    for name in ("float32", "bfloat16", "float16"):
        assert dtype_name(torch_dtype(name)) == name
    with pytest.raises(ConfigError, match="unknown dtype 'float64'"):
        torch_dtype("float64")
    with pytest.raises(ConfigError):
        dtype_name(torch.int8)


def test_a_stage_takes_its_own_dtype_exact_widenings_and_what_its_operator_declared():
    assert accepted_inputs("float32") == ["bfloat16", "float16", "float32"]
    assert accepted_inputs("bfloat16") == ["bfloat16"]
    assert accepted_inputs("bfloat16", ["float16"]) == ["bfloat16", "float16"]


def test_the_cpu_is_always_there():
    assert resolve_device("cpu", "bfloat16") == torch.device("cpu")
    check_fits(torch.device("cpu"), 10**15, "anything")  # the CPU is not sized here


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_is_a_device_error_with_its_exit_code(spec):
    with pytest.raises(DeviceError, match="no usable CUDA device") as info:
        resolve_device(spec, "bfloat16")
    assert info.value.exit_code == ExitCode.DEVICE == 11
    assert "never falls back" in info.value.hint


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "CPU", "mps"])
def test_a_malformed_device_is_a_config_error(spec):
    with pytest.raises(ConfigError, match="is not cpu, cuda or cuda:N"):
        resolve_device(spec)
