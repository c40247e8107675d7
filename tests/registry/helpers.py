"""Helpers for the registry tests: a small PEFT-format adapter directory, eval scores."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file


def make_adapter_dir(path: Path, seed: int) -> Path:
    """A small PEFT-format adapter directory (two tensors)."""
    path.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file(
        {
            f"{key}.lora_A.weight": torch.randn(4, 8, generator=g),
            f"{key}.lora_B.weight": torch.randn(8, 4, generator=g),
        },
        str(path / "adapter_model.safetensors"),
    )
    (path / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]})
    )
    return path


def scores(passed: bool, composite: float = 80.0) -> dict:
    return {
        "suite": "test",
        "model": "smollm2-135m",
        "adapters": ["x"],
        "categories": {
            "bead-creation": {"score": composite, "passed": 4, "total": 5, "threshold": 50}
        },
        "composite": composite,
        "gate": {
            "passed": passed,
            "failed_categories": [] if passed else ["bead-creation"],
            "composite_threshold": 50,
        },
    }
