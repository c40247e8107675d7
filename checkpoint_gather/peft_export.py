"""Export the stages' LoRA adapters as one PEFT adapter directory, with global layer indices.

Each stage holds its adapter tensors in PEFT's saved-key format
(``base_model.model.model.layers.<i>.self_attn.q_proj.lora_A.weight``, see
:mod:`lora.stage_adapters`). A stage that numbers its layers from 0 is shifted to global indices
with :func:`offset_layers`. The stages' layer ranges must cover the model exactly once (the same
proof as for the base weights), every key must lie in its stage's range, then the union is
written with :func:`lora.save_peft_adapter` into a temporary directory that is renamed into place.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from base.atomic import atomic_dir
from base.errors import CheckpointError
from checkpoint_gather.coverage import check_layer_coverage
from checkpoint_gather.sources import manifest_from_state_dict
from lora import LoraSettings, merge_stage_states, save_peft_adapter
from lora.stage_adapters import PEFT_PREFIX
from provenance import sha256_file

EXPORT_RECORD = "node0_export.json"
_LAYER_KEY = re.compile(r"^(base_model\.model\.model\.layers\.)(\d+)(\..+)$")


@dataclass(frozen=True)
class StageAdapters:
    """One stage's adapter tensors (PEFT key format, global layer indices) and its range."""

    source_id: str
    start: int
    end: int
    state: Mapping[str, torch.Tensor]


def offset_layers(state: Mapping[str, torch.Tensor], offset: int) -> dict[str, torch.Tensor]:
    """Shift the layer index of every key by ``offset`` (a stage numbering its layers from 0)."""
    shifted: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        match = _LAYER_KEY.match(key)
        if match is None:
            raise CheckpointError(f"adapter key {key!r} names no decoder layer")
        shifted[f"{match.group(1)}{int(match.group(2)) + offset}{match.group(3)}"] = tensor
    return shifted


def export_peft_adapter(
    out: str | Path,
    stages: Sequence[StageAdapters],
    settings: LoraSettings,
    *,
    num_layers: int,
    base_model: str | None = None,
    provenance: Mapping[str, Any] | None = None,
    durable: bool = True,
) -> Path:
    """Write the union of ``stages`` as a PEFT adapter directory (loads with
    ``PeftModel.from_pretrained(base, out)``).

    Raises:
        CheckpointError: a layer is covered by no stage or twice, a key lies outside its stage's
            range, or a key is held twice.
    """
    manifests = []
    for stage in stages:
        bad = [k for k in stage.state if not k.startswith(PEFT_PREFIX)]
        if bad:
            raise CheckpointError(f"stage {stage.source_id}: keys not in PEFT format: {bad[:3]}")
        plain = {k.removeprefix(PEFT_PREFIX): t for k, t in stage.state.items()}
        manifests.append(manifest_from_state_dict(stage.source_id, stage.start, stage.end, plain))
    check_layer_coverage(num_layers, manifests)
    try:
        merged = merge_stage_states(stage.state for stage in stages)
    except ValueError as exc:
        raise CheckpointError(f"adapter stages overlap: {exc}") from exc
    if not merged:
        raise CheckpointError("no adapter tensors to export")
    with atomic_dir(out, durable=durable) as tmp:
        save_peft_adapter(merged, settings, tmp, base_model=base_model)
        record = {
            "format": "peft-lora",
            "settings_fingerprint": settings.fingerprint(),
            "sources": [m.to_json() for m in manifests],
            "provenance": dict(provenance or {}),
            "files": {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()},
        }
        (tmp / EXPORT_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return Path(out)
