"""Adapter + optimizer checkpoints: round trip, atomic replace, refusal of a foreign config."""

from __future__ import annotations

import pytest
import torch

import lora.checkpoint as checkpoint_module
from base.errors import CheckpointError
from lora import (
    LoraSettings,
    StepGuard,
    adapter_parameters,
    adapter_state_dict,
    attach_adapter,
    load_checkpoint,
    save_checkpoint,
)
from pipeline_stages.loader import load_stage

SETTINGS = LoraSettings(rank=4, alpha=8, init_seed=3)


def _trained_stage(model_dir, steps: int):
    stage = load_stage(model_dir, 2, 4)
    attach_adapter(stage, "code-review", SETTINGS)
    params = adapter_parameters(stage, "code-review")
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    guard = StepGuard(params, max_grad_norm=1.0)
    hidden = torch.randn(2, 6, 64, generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        stage(hidden).square().mean().backward()
        guard.step(optimizer)
    return stage, optimizer, guard


def test_round_trip_restores_adapter_optimizer_and_counters(tiny_model_dir, tmp_path):
    stage, optimizer, guard = _trained_stage(tiny_model_dir, 3)
    path = save_checkpoint(
        tmp_path / "ckpt.pt",
        stage,
        "code-review",
        step=3,
        layers=(2, 4),
        optimizer=optimizer,
        guard=guard,
        extra={"data_position": 42},
    )
    fresh, fresh_opt, fresh_guard = _trained_stage(tiny_model_dir, 0)
    loaded = load_checkpoint(
        path, fresh, "code-review", layers=(2, 4), optimizer=fresh_opt, guard=fresh_guard
    )
    assert loaded.step == 3 and loaded.extra == {"data_position": 42}
    assert fresh_guard.applied == 3
    a, b = adapter_state_dict(stage, "code-review"), adapter_state_dict(fresh, "code-review")
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = optimizer.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)


def test_crash_mid_write_leaves_the_old_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    stage, optimizer, guard = _trained_stage(tiny_model_dir, 1)
    path = save_checkpoint(
        tmp_path / "ckpt.pt", stage, "code-review", step=1, layers=(2, 4), optimizer=optimizer
    )
    old_bytes = path.read_bytes()
    real_save = torch.save

    def crashing_save(obj, handle):
        real_save(obj, handle)
        handle.truncate(100)  # a torn write …
        raise OSError("disk died")  # … and the writer dies before the rename

    monkeypatch.setattr(checkpoint_module.torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk died"):
        save_checkpoint(path, stage, "code-review", step=2, layers=(2, 4), optimizer=optimizer)
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind
    assert load_checkpoint(path, stage, "code-review", layers=(2, 4)).step == 1


def test_foreign_checkpoints_are_refused(tiny_model_dir, tmp_path):
    stage, optimizer, _ = _trained_stage(tiny_model_dir, 1)
    path = save_checkpoint(tmp_path / "ckpt.pt", stage, "code-review", step=1, layers=(2, 4))
    other = load_stage(tiny_model_dir, 2, 4)
    attach_adapter(other, "code-review", SETTINGS.model_copy(update={"alpha": 16}))
    with pytest.raises(CheckpointError, match="other LoRA settings"):
        load_checkpoint(path, other, "code-review", layers=(2, 4))
    with pytest.raises(CheckpointError, match="layers"):
        load_checkpoint(path, stage, "code-review", layers=(0, 2))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "junk.pt", stage, "code-review", layers=(2, 4))
