"""Run-time adapters across a move (:func:`pipeline_stages.runtime_adapters.install_stage`):
the new span gets each held adapter's own layers, equal to loading it from the config there;
an adapter whose file vanished or changed is dropped with its reason, the others still attach.
Real stages of the tiny model, no daemon (tests/node/test_auto_placement.py moves real ones)."""

from __future__ import annotations

import shutil

import pytest
import torch

from base.hashing import sha256_file
from lora.stage_adapters import adapter_state_dict, adapters
from node.daemon import load_task_adapter
from pipeline_stages.executor import StageExecutor
from pipeline_stages.loader import load_stage
from pipeline_stages.runtime_adapters import (
    WEIGHTS,
    held_adapters,
    install_stage,
    load_runtime_adapter,
)
from pipeline_stages.sessions import SessionManager
from tests.fixtures import make_adapter

OLD, NEW = (0, 3), (3, 6)


@pytest.fixture
def executor(tiny_model_dir):
    stages = {OLD: load_stage(tiny_model_dir, *OLD, dtype=torch.float32)}
    sessions = SessionManager(max_sessions=1, max_cache_tokens=64, idle_timeout=60)
    executor = StageExecutor(str(tiny_model_dir), stages, sessions)
    yield executor
    executor.close()


def _load(executor, name: str, directory) -> None:
    loaded, tensors = load_runtime_adapter(
        executor,
        name=name,
        directory=directory,
        sha256=sha256_file(directory / WEIGHTS),
        base_model=executor.model_name,
    )
    assert loaded and tensors > 0


def test_a_move_reattaches_run_time_adapters_from_their_source(executor, tiny_model_dir, tmp_path):
    for seed, name in enumerate(("kept", "vanished", "changed"), start=1):
        make_adapter(tiny_model_dir, name, seed, tmp_path / name)
        _load(executor, name, tmp_path / name)
    shutil.rmtree(tmp_path / "vanished")
    make_adapter(tiny_model_dir, "changed", 9, tmp_path / "changed")  # other weights, same path

    executor.stages.clear()  # the daemon frees the old span before the new one loads
    stage = load_stage(tiny_model_dir, *NEW, dtype=torch.float32)
    dropped = install_stage(executor, NEW, stage)

    assert executor.stages == {NEW: stage}
    assert {d.name: d.reason for d in dropped}.keys() == {"vanished", "changed"}
    reasons = {d.name: d.reason for d in dropped}
    assert "not readable" in reasons["vanished"] and "sha256" in reasons["changed"]
    assert sorted(adapters(stage)) == ["kept"] and sorted(held_adapters(executor)) == ["kept"]
    # the new span's layers, exactly what loading the adapter from the config there gives
    reference = load_stage(tiny_model_dir, *NEW, dtype=torch.float32)
    load_task_adapter([reference], "kept", tmp_path / "kept")
    ours, theirs = adapter_state_dict(stage, "kept"), adapter_state_dict(reference, "kept")
    assert ours.keys() == theirs.keys() and len(ours) > 0
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    # a dropped adapter is forgotten: loading it again (fixed file) is a fresh load
    _load(executor, "changed", tmp_path / "changed")
    assert sorted(adapters(stage)) == ["changed", "kept"]
