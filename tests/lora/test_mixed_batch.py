"""One forward with several adapter sets (none, a, b, a+b stacked) gives each segment what
PEFT gives it with that set active alone."""

from __future__ import annotations

import pytest
import torch

from lora import LoraSettings
from lora.mixed_batch import batch_adapters
from lora.stage_adapters import attach_adapter, lora_layers, use_adapters
from pipeline_stages.loader import load_stage


@pytest.fixture(scope="module")
def stage(tiny_model_dir):
    stage = load_stage(tiny_model_dir, 0, 3)
    for seed, name in enumerate(("a", "b"), start=1):
        attach_adapter(stage, name, LoraSettings(rank=4, alpha=8.0, init_seed=seed))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for layer in lora_layers(stage):
                weight = layer.lora_B[name].weight
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.5)
    return stage.eval()


SETS = [(), ("a",), ("b",), ("a", "b"), ("b", "a")]


@torch.inference_mode()
def test_each_segment_gets_exactly_its_own_adapters(stage):
    generator = torch.Generator().manual_seed(0)
    segments = [torch.randint(0, 200, (1, n), generator=generator) for n in (3, 1, 4, 2, 5)]
    counts = [s.shape[1] for s in segments]
    hidden = stage.model.embed_tokens(torch.cat(segments, dim=1))
    layer = stage.model.layers["0"].self_attn.q_proj  # one adapted linear
    with batch_adapters(stage, SETS, counts):
        mixed = layer(hidden)
    offset = 0
    for names, count in zip(SETS, counts, strict=True):
        with use_adapters(stage, list(names)):
            alone = layer(hidden[:, offset : offset + count])
        assert torch.allclose(mixed[:, offset : offset + count], alone, atol=1e-6), names
        offset += count
    with use_adapters(stage, []):
        base = layer(hidden)
    assert not torch.allclose(mixed, base, atol=1e-3)  # the adapters really changed something


@torch.inference_mode()
def test_one_set_for_all_is_peft_itself_and_hooks_are_removed(stage):
    hidden = torch.randn(1, 6, stage.config.hidden_size)
    layer = stage.model.layers["1"].self_attn.v_proj
    with batch_adapters(stage, [("a",), ("a",)], [2, 4]):
        same = layer(hidden)
    with use_adapters(stage, ["a"]):
        assert torch.equal(same, layer(hidden))
    with batch_adapters(stage, [("a",), ()], [2, 4]):
        pass
    assert all(not layer._forward_hooks for layer in lora_layers(stage))
