"""Remember the sha256 of a stage's live tensors while they are provably unchanged.

A stage's base weights are frozen unless a full fine-tuning job (``trainable="all"``) updates
them, so recomputing their digest on every ``PullWeights`` is wasted work. A digest is stored
under the *state* of the tensor it was computed from, captured under the compute lock when the
snapshot was copied:

* the tensor object itself (held weakly; a new tensor never inherits an entry),
* ``tensor._version`` — torch's version counter, incremented by every in-place operation on the
  tensor or any view of it (optimizer steps, ``copy_``, ``load_state_dict``, ``fill_`` …),
* its data pointer, shape, strides and dtype (``param.data = other`` swaps the storage without
  touching the version counter).

A lookup answers only if all of these still match, so a modified tensor gets a new digest.
Writes that bypass the version counter — through ``tensor.data`` or a NumPy view — are not
seen; nothing in node0 writes stage weights that way (training and averaging update parameters
in place under ``torch.no_grad``, which counts).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch

from checkpoint_gather.sources import tensor_sha256


@dataclass(frozen=True)
class TensorState:
    """What identifies a tensor's content without reading it (see the module docstring)."""

    version: int
    data_ptr: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype

    @classmethod
    def of(cls, tensor: torch.Tensor) -> TensorState:
        return cls(
            tensor._version,
            tensor.data_ptr(),
            tuple(tensor.shape),  # noqa: SLF001
            tuple(tensor.stride()),
            tensor.dtype,
        )


class DigestCache:
    """``tensor -> sha256`` for tensors whose state has not changed since they were hashed.

    Thread-safe. Entries die with their tensor.
    """

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref, TensorState, str]] = {}
        self._lock = threading.RLock()  # a weakref callback may fire while it is held

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def lookup(self, tensor: torch.Tensor, state: TensorState | None = None) -> str | None:
        """The digest of ``tensor`` if it was stored for its current ``state`` (taken now if
        not given), else None."""
        state = state or TensorState.of(tensor)
        with self._lock:
            entry = self._entries.get(id(tensor))
        if entry is None or entry[0]() is not tensor or entry[1] != state:
            return None
        return entry[2]

    def store(self, tensor: torch.Tensor, state: TensorState, digest: str) -> None:
        """Remember ``digest`` for ``tensor`` as it was in ``state`` (captured when the hashed
        bytes were copied). If the tensor has changed since, the entry never answers."""
        key = id(tensor)

        def forget(_ref, key=key) -> None:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None and entry[0]() is None:
                    del self._entries[key]

        with self._lock:
            self._entries[key] = (weakref.ref(tensor, forget), state, digest)

    def digest(self, tensor: torch.Tensor) -> str:
        """The tensor's sha256, from the cache or computed (and stored) now.

        The caller must keep the tensor from changing while it is hashed (hold the lock that
        guards its writers)."""
        state = TensorState.of(tensor)
        digest = self.lookup(tensor, state)
        if digest is None:
            digest = tensor_sha256(tensor)
            self.store(tensor, state, digest)
        return digest
