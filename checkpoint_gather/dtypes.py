"""The dtype an export writes, and converting into it without a silent change of value.

The Hugging Face export (``node0 gather --dtype``) is written in one dtype, chosen by this rule:

* asked (``float32``, ``bfloat16``, ``float16``): that dtype;
* not asked: the dtype the stages hold their base weights in, when every tensor of every stage
  is in that one dtype (a bf16 swarm gathers to bf16); if they disagree, ``float32``, which
  holds each of them exactly.

A tensor already in the written dtype is written as it arrived, byte for byte; any other is
converted once (round to nearest even). A conversion that turns a finite value into an
infinity — a weight beyond float16's 65504, say — is refused with a :class:`CheckpointError`
naming the tensor, never written: an export changes a value by rounding at most. GGUF files
apply the same refusal to the range of their own types (:mod:`checkpoint_gather.gguf_export`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from base.errors import CheckpointError
from base.precision import DTYPES, torch_dtype
from checkpoint_gather.sources import SourceManifest, dtype_name

EXPORT_DTYPES = tuple(DTYPES)  # float32, bfloat16, float16
DEFAULT_DTYPE = "float32"


@dataclass(frozen=True)
class ExportDType:
    """The dtype an export writes, why, and what the sources held.

    Attributes:
        name: the dtype written (one of :data:`EXPORT_DTYPES`).
        asked: the user named it; otherwise the rule of the module docstring chose it.
        held: the dtypes the sources hold their tensors in, sorted.
    """

    name: str
    asked: bool
    held: tuple[str, ...]

    @property
    def as_held(self) -> bool:
        """Every tensor is written with exactly the bytes the sources hold."""
        return self.held == (self.name,)

    @property
    def rule(self) -> str:
        if self.asked:
            return "asked"
        if self.as_held:
            return "the dtype every stage holds"
        return f"{DEFAULT_DTYPE}: the stages hold {', '.join(self.held)}"

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.name, "rule": self.rule, "held": list(self.held)}


def held_dtypes(manifests: Iterable[SourceManifest]) -> tuple[str, ...]:
    """The dtypes the sources declare their tensors in, sorted."""
    return tuple(sorted({e.dtype for m in manifests for e in m.tensors.values()}))


def resolve_export_dtype(asked: str | None, held: Sequence[str]) -> ExportDType:
    """The export's dtype by the rule of the module docstring.

    Raises:
        ConfigError: ``asked`` is not one of :data:`EXPORT_DTYPES`.
    """
    held = tuple(sorted(set(held)))
    if asked is not None:
        torch_dtype(asked)  # refuses an unknown name
        return ExportDType(asked, True, held)
    name = held[0] if len(held) == 1 and held[0] in EXPORT_DTYPES else DEFAULT_DTYPE
    return ExportDType(name, False, held)


def peak_magnitude(tensor: torch.Tensor) -> float:
    """The largest absolute finite value of ``tensor`` (0.0 if it holds none)."""
    if tensor.numel() == 0:
        return 0.0
    low, high = torch.aminmax(tensor)  # a reduction: no copy of the tensor
    peak = max(-low.item(), high.item())
    if math.isfinite(peak):
        return peak
    finite = tensor[torch.isfinite(tensor)]  # the rare tensor that holds inf or nan
    return finite.abs().max().item() if finite.numel() else 0.0


def check_range(name: str, tensor: torch.Tensor, target: str, limit: float, hint: str) -> None:
    """Refuse ``tensor`` if a finite value of it is beyond ``limit``, the largest magnitude
    ``target`` holds."""
    peak = peak_magnitude(tensor)
    if peak > limit:
        raise CheckpointError(
            f"{name}: holds values up to {peak:.6g}, beyond the largest {target} "
            f"can hold ({limit:.6g}); refusing to write them as infinities",
            hint=hint,
        )


def to_export_dtype(name: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` in ``dtype``: itself when it already is, else converted once, refused when a
    finite value does not fit (:class:`CheckpointError`)."""
    if tensor.dtype == dtype:
        return tensor
    if torch.finfo(dtype).max < torch.finfo(tensor.dtype).max:
        check_range(
            name,
            tensor,
            dtype_name(dtype),
            torch.finfo(dtype).max,
            hint="export float32 (or bfloat16, whose range is float32's)",
        )
    return tensor.to(dtype)
