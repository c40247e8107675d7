"""Read a standard PEFT adapter directory into (LoraSettings, state dict).

The inverse of :func:`lora.peft_export.save_peft_adapter`: a daemon loads task adapters
(``adapter_config.json`` + ``adapter_model.safetensors``, whole-model keys) and each stage keeps
the tensors of its own layers. Anything the stages cannot reproduce exactly (bias, DoRA,
rsLoRA, modules outside the LLaMA linear layers) is refused rather than approximated.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from base.errors import CheckpointError
from lora.config import LoraSettings


def read_peft_adapter(directory: str | Path) -> tuple[LoraSettings, dict[str, torch.Tensor]]:
    directory = Path(directory)
    config_path = directory / "adapter_config.json"
    weights_path = directory / "adapter_model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise CheckpointError(
            f"{directory} is not a PEFT adapter directory (needs "
            "adapter_config.json and adapter_model.safetensors)"
        )
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path}: invalid JSON: {exc}") from exc
    if config.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{directory}: peft_type {config.get('peft_type')!r}, not LORA")
    unsupported = [
        key
        for key, off in (("bias", "none"), ("use_dora", False), ("use_rslora", False))
        if config.get(key, off) != off
    ]
    if unsupported:
        raise CheckpointError(f"{directory}: unsupported LoRA options {unsupported}")
    targets = config.get("target_modules")
    if isinstance(targets, str):
        raise CheckpointError(f"{directory}: target_modules as a regex is not supported")
    try:
        settings = LoraSettings(
            rank=config["r"],
            alpha=config["lora_alpha"],
            dropout=config.get("lora_dropout", 0.0),
            target_modules=tuple(targets or ()),
        )
    except (KeyError, ValidationError) as exc:
        raise CheckpointError(f"{config_path}: cannot map to LoraSettings: {exc}") from exc
    try:
        state = load_file(str(weights_path))
    except Exception as exc:
        raise CheckpointError(f"cannot read {weights_path}: {exc}") from exc
    return settings, state
