"""Where a stage runs and in what precision: dtype names, devices, and the fail-closed checks.

A stage, a trainer or a gather names its dtype (``float32``, ``bfloat16``, ``float16``) and its
device (``cpu``, ``cuda``, ``cuda:N``). Nothing here falls back: a CUDA device on a machine
without one, a device index past the last GPU, a dtype the device cannot compute in, or a stage
larger than the device's free memory is a :class:`DeviceError` (exit code 11) naming what was
asked and what the machine has.

Activations cross the wire in the sending stage's dtype. A stage converts what it receives only
when the conversion loses nothing (the same dtype, or bfloat16/float16 into float32) or when its
operator declared the lossy one safe (``accept_input_dtypes``); anything else is refused, and
routes are planned so that it does not happen (:func:`base.routing.plan_route`).
"""

from __future__ import annotations

import re
from typing import Literal

import torch

from base.errors import ConfigError, DeviceError

DType = Literal["float32", "bfloat16", "float16"]
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
_NAMES = {v: k for k, v in DTYPES.items()}
DEVICE_PATTERN = r"^(cpu|cuda(:[0-9]+)?)$"
EXACT_CONVERSIONS = frozenset({("bfloat16", "float32"), ("float16", "float32")})
"""(from, to) pairs a stage converts without losing anything; same-dtype is implied."""


def torch_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ConfigError(f"unknown dtype {name!r}; expected one of {', '.join(DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    try:
        return _NAMES[dtype]
    except KeyError:
        raise ConfigError(f"dtype {dtype} is not a stage dtype ({', '.join(DTYPES)})") from None


def accepted_inputs(dtype: str, declared: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The activation dtypes a stage of ``dtype`` takes: its own, the exact widenings into it,
    and what its operator declared safe."""
    exact = [src for src, dst in sorted(EXACT_CONVERSIONS) if dst == dtype]
    return sorted({dtype, *exact, *declared})


def resolve_device(spec: str, dtype: str = "float32") -> torch.device:
    """The torch device for ``spec``, checked to exist and to compute in ``dtype``."""
    if not re.match(DEVICE_PATTERN, spec):
        raise ConfigError(f"device {spec!r} is not cpu, cuda or cuda:N")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = torch.version.cuda or "no CUDA (a CPU-only build)"
            raise DeviceError(
                f"device {spec!r} asked for, but this machine has no usable CUDA device "
                f"(torch {torch.__version__} built with {built})",
                hint="set device: cpu, or run this on a machine with an NVIDIA GPU; node0 "
                "never falls back to the CPU on its own",
            )
        count = torch.cuda.device_count()
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= count:
            raise DeviceError(f"device {spec!r} asked for, but this machine has {count} GPU(s)")
        device = torch.device("cuda", index)
        if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
            name = torch.cuda.get_device_name(index)
            raise DeviceError(
                f"{name} ({spec}) cannot compute in bfloat16 (it needs compute capability 8.0)",
                hint="use dtype: float16 or float32 on this GPU",
            )
    return device


def check_fits(device: torch.device, needed_bytes: int, what: str) -> None:
    """Refuse to place ``needed_bytes`` of ``what`` on a GPU with less free memory."""
    if device.type != "cuda":
        return
    free, total = torch.cuda.mem_get_info(device)
    if needed_bytes > free:
        raise DeviceError(
            f"{what} needs {needed_bytes / 2**30:.2f} GiB on {device}, which has "
            f"{free / 2**30:.2f} GiB free of {total / 2**30:.2f} GiB",
            hint="host fewer layers here, pick a smaller dtype, or free the GPU",
        )
