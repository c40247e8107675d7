"""Write the union of the stages' adapter dicts as a standard PEFT adapter directory.

The result (``adapter_config.json`` + ``adapter_model.safetensors``) loads with
``PeftModel.from_pretrained(full_model, out_dir, adapter_name=...)`` on the whole model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file

from lora.config import LoraSettings
from lora.stage_adapters import PEFT_PREFIX


def merge_stage_states(states: Iterable[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Union of per-stage adapter dicts; a key held by two stages is an error (overlap)."""
    merged: dict[str, torch.Tensor] = {}
    for state in states:
        overlap = sorted(set(merged) & set(state))
        if overlap:
            raise ValueError(f"stages overlap: {overlap[:3]} held twice")
        merged.update(state)
    return merged


def save_peft_adapter(
    state: dict[str, torch.Tensor],
    settings: LoraSettings,
    out_dir: str | Path,
    *,
    base_model: str | None = None,
) -> Path:
    """Write ``state`` (PEFT key format, see :mod:`lora.stage_adapters`) as a PEFT adapter."""
    bad = [k for k in state if not k.startswith(PEFT_PREFIX)]
    if bad:
        raise ValueError(f"keys are not in PEFT's saved format: {bad[:3]}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = settings.to_peft()
    config.base_model_name_or_path = base_model
    config.save_pretrained(str(out))
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in state.items()},
        str(out / "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )
    (out / "node0_lora.json").write_text(
        json.dumps(
            {"settings": settings.model_dump(mode="json"), "fingerprint": settings.fingerprint()},
            indent=2,
            sort_keys=True,
        )
    )
    return out
