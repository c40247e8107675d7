"""Atomic checkpoints of one stage's adapter: tensors, optimizer state, step counters.

One file per (stage, adapter), written through :func:`base.atomic.atomic_file` (a temporary name
in the same directory, fsynced, then renamed over the old one): a crash at any point leaves
either the old checkpoint or the new one, never a torn file. The file is a
``torch.save`` dict readable with ``weights_only=True``:

``format``            ``"node0-lora-checkpoint/1"``
``adapter``           adapter name
``settings``          :class:`LoraSettings` as JSON-able dict, and ``fingerprint`` (its sha256)
``layers``            ``[start, end)`` of the stage
``step``              optimizer steps applied so far
``adapter_state``     PEFT-format key -> tensor (global layer indices)
``optimizer``         ``optimizer.state_dict()`` (or None)
``guard``             :class:`StepGuard` counters (or None)
``extra``             caller's small JSON-able metadata (e.g. data position)

Tensors are written from the host (a CUDA stage's checkpoint loads on a CPU-only machine) and
in the dtype they train in: adapters and optimizer state are float32 on every stage, whatever
the dtype of its frozen base.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from base.atomic import atomic_file
from base.errors import CheckpointError
from lora.stage_adapters import adapter_state_dict, adapters, load_adapter_state_dict
from lora.step_guard import StepGuard

FORMAT = "node0-lora-checkpoint/1"


@dataclass
class LoadedCheckpoint:
    step: int
    extra: dict = field(default_factory=dict)


def _on_host(value):
    """``value`` with every tensor in it copied to the CPU (dicts and lists walked)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _on_host(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_on_host(v) for v in value)
    return value


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    adapter: str,
    *,
    step: int,
    layers: tuple[int, int],
    optimizer: torch.optim.Optimizer | None = None,
    guard: StepGuard | None = None,
    extra: dict | None = None,
) -> Path:
    """Atomically write ``adapter``'s tensors and training state of ``model`` to ``path``."""
    settings = adapters(model).get(adapter)
    if settings is None:
        raise CheckpointError(f"no adapter {adapter!r} attached to this stage")
    path = Path(path)
    state = {
        "format": FORMAT,
        "adapter": adapter,
        "settings": settings.model_dump(mode="json"),
        "fingerprint": settings.fingerprint(),
        "layers": [int(layers[0]), int(layers[1])],
        "step": int(step),
        "adapter_state": _on_host(adapter_state_dict(model, adapter)),
        "optimizer": _on_host(optimizer.state_dict()) if optimizer is not None else None,
        "guard": guard.state_dict() if guard is not None else None,
        "extra": dict(extra or {}),
    }
    with atomic_file(path, overwrite=True, durable=True) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)
    return path


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    adapter: str,
    *,
    layers: tuple[int, int],
    optimizer: torch.optim.Optimizer | None = None,
    guard: StepGuard | None = None,
) -> LoadedCheckpoint:
    """Restore what :func:`save_checkpoint` wrote; refuses another adapter, config or range."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} file")
    settings = adapters(model).get(adapter)
    if settings is None:
        raise CheckpointError(f"no adapter {adapter!r} attached to this stage")
    if data["adapter"] != adapter:
        raise CheckpointError(f"{path} holds adapter {data['adapter']!r}, not {adapter!r}")
    if data["fingerprint"] != settings.fingerprint():
        raise CheckpointError(
            f"{path} was written with other LoRA settings "
            f"({data['settings']}) than this adapter's "
            f"({settings.model_dump(mode='json')})"
        )
    if list(data["layers"]) != [int(layers[0]), int(layers[1])]:
        raise CheckpointError(
            f"{path} is for layers {data['layers']}, this stage holds {list(layers)}"
        )
    load_adapter_state_dict(model, adapter, data["adapter_state"])
    if optimizer is not None and data["optimizer"] is not None:
        optimizer.load_state_dict(data["optimizer"])
    if guard is not None and data["guard"] is not None:
        guard.load_state_dict(data["guard"])
    return LoadedCheckpoint(step=int(data["step"]), extra=dict(data["extra"]))
