"""Coverage proof: every layer exactly once, every tensor present, tied heads handled."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from base.errors import CheckpointError
from checkpoint_gather.coverage import check_coverage
from checkpoint_gather.sources import manifest_from_state_dict, verify_tensors
from models import EMBED, LM_HEAD
from tests.fixtures import load_config, stage_sources


@pytest.mark.parametrize("tied", [False, True])
def test_complete_split_is_proven(tiny_models, tied):
    config = load_config(tiny_models[tied])
    sources = stage_sources(tiny_models[tied])
    plan = check_coverage(config, [m for m, _ in sources])
    assert plan.layer_sources == {
        0: "peer-0/stage-0-2",
        1: "peer-0/stage-0-2",
        2: "peer-1/stage-2-5",
        3: "peer-1/stage-2-5",
        4: "peer-1/stage-2-5",
        5: "peer-2/stage-5-6",
    }
    assert plan.tied is tied
    assert (LM_HEAD in plan.owner) is not tied
    assert plan.owner[EMBED] == "peer-0/stage-0-2"


def test_missing_layers_are_named(tiny_models):
    config = load_config(tiny_models[False])
    sources = stage_sources(tiny_models[False], stages=((0, 2), (4, 6)))
    with pytest.raises(CheckpointError, match=r"layers 2-3 are held by no source"):
        check_coverage(config, [m for m, _ in sources])


def test_duplicated_layers_are_named(tiny_models):
    config = load_config(tiny_models[False])
    sources = stage_sources(tiny_models[False], stages=((0, 3), (2, 6)))
    with pytest.raises(
        CheckpointError, match=r"layers 2 are held twice \(peer-0/stage-0-3 and peer-1/stage-2-6\)"
    ):
        check_coverage(config, [m for m, _ in sources])


def test_untied_model_needs_its_head(tiny_models):
    config = load_config(tiny_models[False])
    (first, _), (mid, _), (last, _) = stage_sources(tiny_models[False])
    tensors = {n: e for n, e in last.tensors.items() if n != LM_HEAD}
    last = dataclasses.replace(last, tensors=tensors)
    with pytest.raises(CheckpointError, match=r"LM head \(embeddings are not tied\)"):
        check_coverage(config, [first, mid, last])


def test_missing_embedding(tiny_models):
    config = load_config(tiny_models[True])
    (first, _), (mid, _), (last, _) = stage_sources(tiny_models[True])
    first = dataclasses.replace(
        first, tensors={n: e for n, e in first.tensors.items() if n != EMBED}
    )
    with pytest.raises(CheckpointError, match="token embedding"):
        check_coverage(config, [first, mid, last])


def test_tied_head_copy_must_equal_embedding(tiny_models):
    """A last stage of a tied model carries the head as a copy of the embedding: accepted and
    dropped when identical, refused when it diverged."""
    config = load_config(tiny_models[True])
    sources = stage_sources(tiny_models[True])
    embed = sources[0][1][EMBED]
    last_manifest, last_state = sources[-1]
    for head, ok in ((embed.clone(), True), (embed + 1e-3, False)):
        state = {**last_state, LM_HEAD: head}
        manifest = manifest_from_state_dict(last_manifest.source_id, 5, 6, state)
        manifests = [sources[0][0], sources[1][0], manifest]
        if ok:
            plan = check_coverage(config, manifests)
            assert plan.dropped == [LM_HEAD] and LM_HEAD not in plan.owner
        else:
            with pytest.raises(CheckpointError, match="differs from the token embedding"):
                check_coverage(config, manifests)


def test_shape_and_dtype_are_checked(tiny_models):
    config = load_config(tiny_models[False])
    sources = stage_sources(tiny_models[False])
    manifest, state = sources[1]
    name = "model.layers.3.mlp.up_proj.weight"
    for bad, pattern in ((state[name][:-1], "shape"), (state[name].to(torch.int8), "dtype int8")):
        broken = manifest_from_state_dict(manifest.source_id, 2, 5, {**state, name: bad})
        with pytest.raises(CheckpointError, match=pattern):
            check_coverage(config, [sources[0][0], broken, sources[2][0]])
    # floating dtypes may differ between (and within) sources: the export chooses what it writes
    mixed = manifest_from_state_dict(manifest.source_id, 2, 5, {**state, name: state[name].half()})
    check_coverage(config, [sources[0][0], mixed, sources[2][0]])


def test_tensor_outside_declared_range(tiny_models):
    config = load_config(tiny_models[False])
    sources = stage_sources(tiny_models[False])
    manifest, state = sources[0]
    lying = dataclasses.replace(manifest, end=1)  # declares [0, 1) but holds layer 1
    with pytest.raises(CheckpointError, match="holds tensors of layers 1"):
        check_coverage(config, [lying, sources[1][0], sources[2][0]])


def test_arrived_tensors_are_verified(tiny_models):
    manifest, state = stage_sources(tiny_models[False])[1]
    verify_tensors(manifest, state)
    name = "model.layers.2.self_attn.k_proj.weight"
    corrupt = dict(state)
    corrupt[name] = state[name].clone()
    corrupt[name][0, 0] += 1.0
    with pytest.raises(CheckpointError, match=f"{name} is corrupt"):
        verify_tensors(manifest, corrupt)
    with pytest.raises(CheckpointError, match="missing"):
        verify_tensors(manifest, {k: v for k, v in state.items() if k != name})
    assert torch.equal(state[name], stage_sources(tiny_models[False])[1][1][name])
