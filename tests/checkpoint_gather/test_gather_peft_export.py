"""PEFT adapter export: per-stage adapter dicts (some numbered from 0) -> one adapter that
``PeftModel.from_pretrained`` loads on the whole model with the same logits."""

from __future__ import annotations

import json
import re

import pytest
import torch

from base.errors import CheckpointError
from checkpoint_gather.peft_export import StageAdapters, export_peft_adapter, offset_layers
from lora import LoraSettings
from tests.fixtures import NUM_LAYERS, load_causal_lm, logits

SETTINGS = LoraSettings(rank=4, alpha=8.0, target_modules=("q_proj", "v_proj", "down_proj"))
_LAYER = re.compile(r"\.layers\.(\d+)\.")


@pytest.fixture()
def trained_adapter(tiny_models):
    """A tiny model with a LoRA adapter whose B matrices are non-zero, and its full state."""
    from peft import get_peft_model, get_peft_model_state_dict

    torch.manual_seed(7)
    model = get_peft_model(load_causal_lm(tiny_models[False]), SETTINGS.to_peft())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.2)
    model.eval()
    return model, get_peft_model_state_dict(model)


def _stage_states(full, stages, *, local):
    """Split a full adapter state into stages; ``local`` numbers each stage's layers from 0."""
    out = []
    for start, end in stages:
        part = {k: v for k, v in full.items() if start <= int(_LAYER.search(k).group(1)) < end}
        if local:
            part = offset_layers(part, -start)
        out.append((start, end, part))
    return out


def test_union_of_stages_loads_with_peft(tiny_models, tmp_path, trained_adapter):
    from peft import PeftModel

    model, full = trained_adapter
    assert all(k.startswith("base_model.model.model.layers.") for k in full)
    stages = []
    for i, (start, end, part) in enumerate(
        _stage_states(full, ((0, 2), (2, 5), (5, 6)), local=True)
    ):
        if start > 0:
            assert any(".layers.0." in k for k in part)  # numbered from 0 as a stage would
        stages.append(StageAdapters(f"peer-{i}", start, end, offset_layers(part, start)))
    out = export_peft_adapter(
        tmp_path / "adapter",
        stages,
        SETTINGS,
        num_layers=NUM_LAYERS,
        base_model=str(tiny_models[False]),
        provenance={"run": "t"},
    )
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4
    assert sorted(config["target_modules"]) == ["down_proj", "q_proj", "v_proj"]
    loaded = PeftModel.from_pretrained(load_causal_lm(tiny_models[False]), str(out)).eval()
    base = logits(load_causal_lm(tiny_models[False]))
    expected = logits(model)
    assert (expected - base).abs().max() > 1e-2  # the adapter changes the output
    assert (logits(loaded) - expected).abs().max().item() <= 1e-5


def test_adapter_coverage_is_checked(tiny_models, tmp_path, trained_adapter):
    _, full = trained_adapter
    parts = _stage_states(full, ((0, 3), (3, 6)), local=False)
    gap = [StageAdapters("a", 0, 3, parts[0][2])]
    with pytest.raises(CheckpointError, match="layers 3-5 are held by no source"):
        export_peft_adapter(tmp_path / "a", gap, SETTINGS, num_layers=NUM_LAYERS)
    # a stage that forgot to offset its local numbering: keys outside its declared range
    local = offset_layers(parts[1][2], -3)
    wrong = [StageAdapters("a", 0, 3, parts[0][2]), StageAdapters("b", 3, 6, local)]
    with pytest.raises(CheckpointError, match="declares layers \\[3, 6\\) but holds tensors"):
        export_peft_adapter(tmp_path / "a", wrong, SETTINGS, num_layers=NUM_LAYERS)
    assert not (tmp_path / "a").exists()


def test_adapters_only_export_job(tiny_models, tmp_path, trained_adapter):
    from peft import PeftModel
    from transformers import AutoConfig

    from checkpoint_gather.export import export_checkpoint
    from provenance import sha256_file

    model, full = trained_adapter
    stages = [
        StageAdapters(f"peer-{i}", s, e, part)
        for i, (s, e, part) in enumerate(_stage_states(full, ((0, 4), (4, 6)), local=False))
    ]
    config = AutoConfig.from_pretrained(str(tiny_models[False]))
    result = export_checkpoint(
        tmp_path / "job",
        config,
        [],
        tokenizer_dir=tiny_models[False],
        hf=False,
        gguf_types=(),
        adapters=stages,
        lora_settings=SETTINGS,
    )
    assert result.hf_dir is None and result.plan is None
    assert sorted(p.name for p in result.out_dir.iterdir()) == ["adapter", "manifest.json"]
    manifest = json.loads(result.manifest.read_text())
    files = manifest["outputs"]["peft-adapter"]["files"]
    assert files["adapter/adapter_model.safetensors"]["sha256"] == sha256_file(
        result.adapter_dir / "adapter_model.safetensors"
    )
    loaded = PeftModel.from_pretrained(
        load_causal_lm(tiny_models[False]), str(result.adapter_dir)
    ).eval()
    assert (logits(loaded) - logits(model)).abs().max().item() <= 1e-5
