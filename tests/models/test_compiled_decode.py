"""The compiled decode step (models.compiled_decode) computes the eager step's outputs: equal
(``torch.equal``) in bfloat16, within a measured tolerance in float32 (inductor's fused
reductions sum in another order), over enough steps for the cache buffers to grow; and it
takes only one session's next position after a cached prompt."""

from __future__ import annotations

import pytest
import torch

from models.compiled_decode import CompiledDecode
from models.ragged_batch import RaggedBatch, Segment, SessionKV
from pipeline_stages.loader import load_stage
from pipeline_stages.passing_thread import on_passing_thread

STEPS = 70  # a 5-token prompt, then past the buffers' first 64 positions (they double)
FLOAT32_ATOL = 5e-5  # measured worst over the steps on this machine: 1.1e-05


def eager_step(stage, kv, inputs):
    batch = RaggedBatch([Segment(kv, inputs.shape[1])])
    out = stage.forward_batch(inputs, batch)
    batch.commit()
    return out


def decode_both(stage, compiled, prompt, steps):
    """Greedy decode of ``prompt`` by the eager and the compiled step, each on its own cache,
    the eager step's token fed to both; yields (eager output, compiled output) per step."""
    eager_kv, compiled_kv = stage.new_session_kv(128), stage.new_session_kv(128)
    eager_step(stage, eager_kv, prompt)
    logits = eager_step(stage, compiled_kv, prompt)
    for _ in range(steps):
        token = logits.argmax(-1).view(1, 1)
        logits = eager_step(stage, eager_kv, token)
        out = compiled(token, compiled_kv)
        compiled_kv.commit(1)
        yield logits, out
    assert compiled_kv._capacity(0) == 128  # the buffers grew under the compiled step


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@torch.inference_mode()
def test_compiled_decode_equals_the_eager_step(tiny_model_dir, dtype):
    stage = load_stage(tiny_model_dir, 0, 6, dtype=dtype)  # first and last: embed, blocks, head
    compiled = CompiledDecode(stage)
    assert compiled.warm_up() > 0
    prompt = torch.tensor([[5, 17, 99, 3, 42]])
    worst = 0.0
    for eager, out in decode_both(stage, compiled, prompt, STEPS):
        assert out.shape == eager.shape and out.dtype == eager.dtype
        if dtype == torch.bfloat16:
            assert torch.equal(out, eager)
        worst = max(worst, (out.float() - eager.float()).abs().max().item())
    print(f"\n{dtype}: worst |compiled - eager| over {STEPS} steps: {worst:.2e}")
    assert worst <= FLOAT32_ATOL


@pytest.mark.slow
@pytest.mark.parametrize("span", [(0, 2), (2, 4), (4, 6)])
@torch.inference_mode()
def test_compiled_stages_of_a_split_equal_the_eager_steps(tiny_qwen2_dir, span):
    """Each kind of stage (first, middle with hidden-state inputs, last), on the other family
    (qwen2: biased projections)."""
    stage = load_stage(tiny_qwen2_dir, *span, dtype=torch.bfloat16)
    compiled = CompiledDecode(stage)
    compiled.warm_up()
    generator = torch.Generator().manual_seed(span[0])
    hidden = stage.full_config.hidden_size
    eager_kv, compiled_kv = stage.new_session_kv(128), stage.new_session_kv(128)

    def inputs(n):
        if stage.is_first:
            return torch.randint(0, stage.full_config.vocab_size, (1, n), generator=generator)
        return torch.randn((1, n, hidden), generator=generator).to(torch.bfloat16)

    prompt = inputs(9)
    eager_step(stage, eager_kv, prompt)
    eager_step(stage, compiled_kv, prompt)
    for _ in range(STEPS):
        x = inputs(1)
        eager = eager_step(stage, eager_kv, x)
        out = compiled(x, compiled_kv)
        compiled_kv.commit(1)
        assert torch.equal(out, eager)


def test_takes_one_sessions_next_position_after_a_cached_prompt():
    cached, empty = SessionKV(2, 16), SessionKV(2, 16)
    cached.length = 3
    assert CompiledDecode.takes(RaggedBatch([Segment(cached, 1)]))
    assert not CompiledDecode.takes(RaggedBatch([Segment(cached, 2)]))  # a prompt chunk
    assert not CompiledDecode.takes(RaggedBatch([Segment(empty, 1)]))  # nothing cached yet
    other = SessionKV(2, 16)
    other.length = 5
    assert not CompiledDecode.takes(RaggedBatch([Segment(cached, 1), Segment(other, 1)]))


def test_buffers_grow_keeping_what_is_cached_and_refuse_past_max_length():
    kv = SessionKV(2, 100)
    with pytest.raises(ValueError, match="empty cache"):
        kv.buffers(1)
    keys = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)
    for layer in range(2):
        kv.write(layer, keys, keys + 1)
    kv.commit(3)
    k, v = kv.buffers(70)
    assert all(b.shape == (1, 2, 100, 4) for b in k + v)  # min(100, max(64, 70, 2 * 64))
    assert torch.equal(k[1][:, :, :3], keys) and torch.equal(v[0][:, :, :3], keys + 1)
    with pytest.raises(ValueError, match="exceed"):
        kv.buffers(101)


def test_compiled_on_another_thread_equals_the_eager_step(tiny_model_dir):
    """Compiled on one thread, run on another (a daemon compiles on a passing thread and serves
    from the scheduler's): still the eager step's bfloat16 outputs. torch's compiler settings
    are per thread; one set on the importing thread alone gave other outputs here."""
    stage = load_stage(tiny_model_dir, 0, 6, dtype=torch.bfloat16)
    compiled = CompiledDecode(stage)

    def decode():
        with torch.inference_mode():
            prompt = torch.tensor([[5, 17, 99, 3, 42]])
            return [torch.equal(o, e) for e, o in decode_both(stage, compiled, prompt, STEPS)]

    assert on_passing_thread(compiled.warm_up) > 0
    assert on_passing_thread(decode) == [True] * STEPS
