"""A ragged batch (sessions laid end to end, each with its own cache) computes what each
session computes alone: logits within 1e-5 of the whole-model reference, per family, with
prompts fed in chunks beside other sessions' decode tokens, and after a rewind."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from models.ragged_batch import RaggedBatch, Segment, _segment_mask, gemm_rows
from pipeline_stages.loader import load_stage

SPLIT = [(0, 2), (2, 4), (4, 6)]
FAMILY_DIRS = {"llama": "tiny_model_dir", "qwen2": "tiny_qwen2_dir"}


@pytest.fixture(scope="module", params=sorted(FAMILY_DIRS))
def model_dir(request):
    return request.getfixturevalue(FAMILY_DIRS[request.param])


@pytest.fixture(scope="module")
def reference(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def step_all(stages, kvs, pieces: list[tuple[int, list[int]]]) -> torch.Tensor:
    """One batched step through every stage: ``pieces`` = (session, new token ids)."""
    x = torch.tensor([[t for _, ids in pieces for t in ids]])
    batches = []
    for k, stage in enumerate(stages):
        batch = RaggedBatch([Segment(kvs[i][k], len(ids)) for i, ids in pieces])
        x = stage.forward_batch(x, batch)
        batches.append(batch)
    for batch in batches:
        batch.commit()
    return x  # (segments, vocab)


@torch.inference_mode()
def test_chunked_prefill_beside_decodes_matches_each_session_alone(model_dir, reference):
    stages = [load_stage(model_dir, s, e) for s, e in SPLIT]
    generator = torch.Generator().manual_seed(4)
    vocab = reference.config.vocab_size
    seqs = [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in (5, 19, 1, 9)]
    kvs = [[stage.new_session_kv(64) for stage in stages] for _ in seqs]
    fed = [0] * len(seqs)
    worst, steps = 0.0, 0
    while steps < 8:
        pieces = []
        for i, seq in enumerate(seqs):
            n = min(7, len(seq) - fed[i])  # prompts in chunks of 7; then one token a step
            pieces.append((i, seq[fed[i] : fed[i] + n]))
        logits = step_all(stages, kvs, pieces)
        for row, (i, ids) in enumerate(pieces):
            fed[i] += len(ids)
            expected = reference(torch.tensor([seqs[i][: fed[i]]])).logits[0, -1]
            worst = max(worst, (logits[row] - expected).abs().max().item())
            if fed[i] == len(seqs[i]):
                seqs[i].append(int(logits[row].argmax()))
        steps += 1
    assert worst < 1e-5, worst
    assert all(kv.length == fed[i] for i, per in enumerate(kvs) for kv in per)


@torch.inference_mode()
def test_crop_rewinds_one_session_and_leaves_the_other(model_dir, reference):
    stages = [load_stage(model_dir, s, e) for s, e in SPLIT]
    kvs = [[stage.new_session_kv(32) for stage in stages] for _ in range(2)]
    step_all(stages, kvs, [(0, [5, 17, 99, 3, 42, 7, 8]), (1, [9, 9, 4])])
    for kv in kvs[0]:
        kv.crop(4)
    logits = step_all(stages, kvs, [(0, [11, 12]), (1, [6])])
    fresh = reference(torch.tensor([[5, 17, 99, 3, 11, 12]])).logits[0, -1]
    other = reference(torch.tensor([[9, 9, 4, 6]])).logits[0, -1]
    assert torch.allclose(logits[0], fresh, atol=1e-5)
    assert torch.allclose(logits[1], other, atol=1e-5)


def test_a_cache_grows_past_its_first_buffer_and_refuses_past_max_length():
    from models.ragged_batch import SessionKV

    kv = SessionKV(num_layers=1, max_length=100)
    written = []
    for _ in range(2):  # 80 positions: past the first 64-position buffer
        keys = torch.randn(1, 2, 40, 4)
        stored, _ = kv.write(0, keys, keys)
        kv.commit(40)
        written.append(keys)
    assert torch.equal(stored, torch.cat(written, dim=2))
    with pytest.raises(ValueError, match="exceed"):
        kv.write(0, torch.randn(1, 2, 21, 4), torch.randn(1, 2, 21, 4))
    assert kv.length == 80


def test_segment_masks_are_causal_from_the_cached_past():
    assert _segment_mask(5, 1, None, torch.device("cpu")) is None  # decode sees everything
    assert _segment_mask(0, 4, None, torch.device("cpu")) is None  # SDPA's own is_causal
    mask = _segment_mask(2, 3, None, torch.device("cpu"))[0, 0]
    assert mask.tolist() == [
        [True, True, True, False, False],
        [True, True, True, True, False],
        [True, True, True, True, True],
    ]
    window = _segment_mask(2, 1, 2, torch.device("cpu"))[0, 0]
    assert window.tolist() == [[False, True, True]]


def test_a_float32_batch_of_several_rows_is_padded_to_a_multiple_of_four():
    assert [gemm_rows(n) for n in range(1, 10)] == [1, 4, 4, 4, 8, 8, 8, 8, 12]
    assert gemm_rows(3, torch.bfloat16) == 3  # oneDNN: no such shapes to avoid


def test_the_lm_head_of_a_few_rows_is_the_linear_product_and_follows_the_weight(model_dir):
    stage = load_stage(model_dir, *SPLIT[-1])
    generator = torch.Generator().manual_seed(7)
    hidden = stage.full_config.hidden_size
    with torch.inference_mode():
        for m in (1, 2, 3, 8, 9, 12):  # one row, W @ x^T, nn.Linear
            rows = torch.randn(m, hidden, generator=generator)
            assert torch.allclose(stage.head_logits(rows), stage.lm_head(rows), atol=1e-5), m
    rows = torch.randn(1, hidden, generator=generator)
    with torch.no_grad():
        stage.lm_head.weight.mul_(2)  # an in-place change (a loaded or merged weight)
        assert torch.allclose(stage.head_logits(rows), stage.lm_head(rows), atol=1e-5)
