"""The stages' digest cache: a digest is reused only while its tensor is provably unchanged."""

from __future__ import annotations

import gc

import torch

from checkpoint_gather.digest_cache import DigestCache, TensorState
from checkpoint_gather.sources import tensor_sha256
from checkpoint_gather.weights_client import PullTarget, StagePull
from tests.fixtures import NUM_LAYERS, stage_server


def test_a_modified_tensor_gets_a_new_digest():
    cache = DigestCache()
    param = torch.nn.Parameter(torch.arange(12, dtype=torch.float32).reshape(3, 4))
    first = cache.digest(param)
    assert first == tensor_sha256(param) and cache.lookup(param) == first
    with torch.no_grad():
        param[1].add_(1.0)  # in place, through a view
    assert cache.lookup(param) is None
    assert cache.digest(param) == tensor_sha256(param) != first
    opt = torch.optim.AdamW([param], lr=0.1)
    param.grad = torch.ones_like(param)
    before = cache.digest(param)
    opt.step()  # an optimizer step bumps the version counter
    assert cache.lookup(param) is None and cache.digest(param) != before
    param.data = torch.zeros(3, 4)  # storage swapped: the version counter does not move
    assert cache.lookup(param) is None and cache.digest(param) == tensor_sha256(param)


def test_a_digest_stored_for_an_older_state_never_answers():
    cache = DigestCache()
    tensor = torch.ones(5)
    state = TensorState.of(tensor)
    digest = tensor_sha256(tensor)  # of a copy taken at ``state``
    tensor.mul_(2)  # changed before the digest was stored
    cache.store(tensor, state, digest)
    assert cache.lookup(tensor) is None


def test_entries_die_with_their_tensor():
    cache = DigestCache()
    tensor = torch.ones(5)
    cache.digest(tensor)
    assert len(cache) == 1
    del tensor
    gc.collect()
    assert len(cache) == 0
    other = torch.ones(5)
    assert cache.lookup(other) is None


def test_stage_reuses_digests_until_a_weight_changes(tiny_models):
    model_dir = tiny_models[True]
    span = (NUM_LAYERS - 1, NUM_LAYERS)  # the last stage: it holds the tied LM head
    with stage_server(model_dir, spans=[span]) as (executor, weights, endpoint):
        first = StagePull(PullTarget(endpoint, "peer-a", *span), str(model_dir)).run()
        assert len(weights.digests) == len(first.base.tensors)
        weight = executor.stages[span].model.layers[str(span[0])].mlp.up_proj.weight
        name = f"model.layers.{span[0]}.mlp.up_proj.weight"
        with torch.no_grad():
            weight.mul_(-1.0)
        second = StagePull(PullTarget(endpoint, "peer-a", *span), str(model_dir)).run()
    digests = [{n: e.sha256 for n, e in s.base.tensors.items()} for s in (first, second)]
    assert digests[1][name] == tensor_sha256(weight.detach()) != digests[0][name]
    assert torch.equal(second.base_tensors[name], weight.detach())
    assert {n: d for n, d in digests[1].items() if n != name} == {
        n: d for n, d in digests[0].items() if n != name
    }
    # the tied head was declared by its digest only
    assert first.digest_only == ("lm_head.weight",)
    assert "lm_head.weight" not in first.base_tensors
    assert first.bytes == sum(t.numel() * 4 for t in first.base_tensors.values())
