"""Staged forward = step-by-step KV-cache decode = the single-process reference, per family
(tiny LLaMA and tiny Qwen2 against transformers' ``LlamaForCausalLM`` / ``Qwen2ForCausalLM``)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from pipeline_stages.loader import load_stage

SPLITS = [[(0, 6)], [(0, 2), (2, 4), (4, 6)], [(0, 1), (1, 5), (5, 6)]]
FAMILY_DIRS = {"llama": "tiny_model_dir", "qwen2": "tiny_qwen2_dir"}


@pytest.fixture(scope="module", params=sorted(FAMILY_DIRS))
def model_dir(request):
    return request.getfixturevalue(FAMILY_DIRS[request.param])


@pytest.fixture(scope="module")
def reference(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def run_stages(stages, ids, caches=None, keep=0):
    x = ids
    for i, stage in enumerate(stages):
        x = stage(x, cache=caches[i] if caches else None, logits_to_keep=keep)
    return x


@pytest.mark.parametrize("split", SPLITS)
@torch.inference_mode()
def test_staged_forward_matches_reference(model_dir, reference, split):
    stages = [load_stage(model_dir, s, e) for s, e in split]
    ids = torch.randint(
        0, reference.config.vocab_size, (1, 17), generator=torch.Generator().manual_seed(1)
    )
    expected = reference(ids).logits
    assert torch.allclose(run_stages(stages, ids), expected, atol=1e-5, rtol=0)


@torch.inference_mode()
def test_incremental_decode_with_cache_matches_reference_generate(model_dir, reference):
    stages = [load_stage(model_dir, s, e) for s, e in SPLITS[1]]
    ids = torch.tensor([[5, 17, 99, 3, 42]])
    expected = reference.generate(
        ids, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0
    )[0, ids.shape[1] :].tolist()
    caches = [s.new_cache() for s in stages]
    logits = run_stages(stages, ids, caches, keep=1)
    tokens = []
    for _ in range(20):
        tokens.append(int(logits[0, -1].argmax()))
        logits = run_stages(stages, torch.tensor([[tokens[-1]]]), caches, keep=1)
    assert tokens == expected


@torch.inference_mode()
def test_cache_crop_rewinds_exactly(model_dir):
    stages = [load_stage(model_dir, s, e) for s, e in SPLITS[1]]
    ids = torch.tensor([[5, 17, 99, 3, 42, 7, 8]])
    caches = [s.new_cache() for s in stages]
    run_stages(stages, ids, caches, keep=1)
    for cache in caches:
        cache.crop(-3)
    rewound = run_stages(stages, torch.tensor([[11, 12, 13]]), caches, keep=1)
    fresh = run_stages(stages, torch.tensor([[5, 17, 99, 3, 11, 12, 13]]), keep=1)
    assert torch.allclose(rewound, fresh, atol=1e-5)


def test_stage_holds_only_its_own_tensors(model_dir):
    middle = load_stage(model_dir, 2, 4)
    names = set(middle.state_dict())
    assert all(".layers.2." in n or ".layers.3." in n for n in names if "rotary" not in n)
    assert middle.model.embed_tokens is None and middle.lm_head is None
    first, last = load_stage(model_dir, 0, 2), load_stage(model_dir, 4, 6)
    assert first.model.embed_tokens is not None and first.lm_head is None
    assert last.lm_head is not None and last.model.norm is not None
