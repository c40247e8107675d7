"""Where gathered tensors come from: per-source manifests and per-tensor digests.

A *source* is one stage of the model held by one peer (or, offline, one layer range of a local
checkpoint). Its :class:`SourceManifest` lists every tensor it provides with shape, dtype and
sha256; the digest is computed by the source and checked on arrival (:func:`verify_tensors`).
:func:`tensor_sha256` is the one definition of a tensor's digest — stages compute it with the same
function before sending.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from base.errors import CheckpointError
from models import EMBED, FINAL_NORM, LM_HEAD, index_checkpoint, parse_layer


def tensor_sha256(tensor: torch.Tensor) -> str:
    """sha256 of the tensor's raw bytes (C order, native little-endian, its own dtype)."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy()).hexdigest()  # hashed in place


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as a source declares it."""

    shape: tuple[int, ...]
    dtype: str  # torch dtype name, e.g. "float32"
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype, "sha256": self.sha256}


@dataclass(frozen=True)
class SourceManifest:
    """What one source (a peer's stage) holds: layers ``[start, end)`` and its tensors.

    Attributes:
        source_id: unique label of the source, e.g. ``"peer-a/stage-0"``.
        start: first global layer index held.
        end: one past the last layer held.
        tensors: HF tensor name (global layer indices) -> declared entry.
        peer: peer id or endpoint the tensors came from (provenance only).
    """

    source_id: str
    start: int
    end: int
    tensors: Mapping[str, TensorEntry]
    peer: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> range:
        return range(self.start, self.end)

    def to_json(self) -> dict[str, Any]:
        return {
            "source_id": self.source_id,
            "peer": self.peer,
            "layers": [self.start, self.end],
            "tensors": {n: e.to_json() for n, e in sorted(self.tensors.items())},
            **({"extra": dict(self.extra)} if self.extra else {}),
        }


def manifest_from_state_dict(
    source_id: str,
    start: int,
    end: int,
    state: Mapping[str, torch.Tensor],
    *,
    peer: str | None = None,
) -> SourceManifest:
    """Describe ``state`` (what a stage would send) as a manifest with per-tensor digests."""
    entries = {
        name: TensorEntry(tuple(t.shape), dtype_name(t.dtype), tensor_sha256(t))
        for name, t in state.items()
    }
    return SourceManifest(source_id, start, end, entries, peer=peer)


def verify_tensors(
    manifest: SourceManifest,
    state: Mapping[str, torch.Tensor],
    *,
    check_digests: bool = True,
    may_lack: Iterable[str] = (),
) -> None:
    """Check received tensors against the source's declaration; raise naming the first bad one.

    ``check_digests=False`` checks names, shapes and dtypes only (the digests were verified
    when the tensors arrived). Names in ``may_lack`` may be declared without having arrived
    (a tied LM head declared by its digest only, which the coverage proof drops)."""
    missing = sorted(set(manifest.tensors) - set(state) - set(may_lack))
    extra = sorted(set(state) - set(manifest.tensors))
    if missing or extra:
        raise CheckpointError(
            f"source {manifest.source_id}: received tensors differ from its manifest "
            f"(missing {missing[:3]}, undeclared {extra[:3]})"
        )
    for name, entry in manifest.tensors.items():
        if name not in state:
            continue  # in may_lack
        tensor = state[name]
        if tuple(tensor.shape) != entry.shape or dtype_name(tensor.dtype) != entry.dtype:
            raise CheckpointError(
                f"source {manifest.source_id}: {name} arrived as {list(tensor.shape)} "
                f"{dtype_name(tensor.dtype)}, declared {list(entry.shape)} {entry.dtype}"
            )
        if check_digests and tensor_sha256(tensor) != entry.sha256:
            raise CheckpointError(
                f"source {manifest.source_id}: {name} is corrupt (sha256 mismatch)",
                hint="the transfer damaged the tensor; gather again",
            )


def stage_tensor_names(names, start: int, end: int, *, first: bool, last: bool) -> list[str]:
    """The subset of ``names`` a stage holding ``[start, end)`` owns."""
    owned = []
    for name in names:
        parsed = parse_layer(name)
        if parsed is not None:
            if start <= parsed[0] < end:
                owned.append(name)
        elif (first and name == EMBED) or (last and name in (FINAL_NORM, LM_HEAD)):
            owned.append(name)
    return owned


def read_local_stage(
    model_dir: str | Path,
    start: int,
    end: int,
    *,
    num_layers: int,
    source_id: str | None = None,
    dtype: torch.dtype | None = torch.float32,
) -> tuple[SourceManifest, dict[str, torch.Tensor]]:
    """Read layers ``[start, end)`` (plus embeddings / norm / head at the ends) of a local HF
    checkpoint as one source, the way a stage holds them: tensors under global names in
    ``dtype`` (a stage's dtype, converted once from the file's, as the stage loader does), or in
    the file's own dtypes with ``dtype=None``."""
    index = index_checkpoint(model_dir)
    names = stage_tensor_names(index.shapes, start, end, first=start == 0, last=end == num_layers)
    state: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for name in names:
        by_file.setdefault(index.files[name], []).append(name)
    for path, file_names in by_file.items():
        with safe_open(str(path), framework="pt") as handle:
            for name in file_names:
                tensor = handle.get_tensor(name)
                state[name] = tensor if dtype is None else tensor.to(dtype)
    manifest = manifest_from_state_dict(
        source_id or f"{Path(model_dir).name}[{start}:{end})", start, end, state, peer="local"
    )
    return manifest, state
