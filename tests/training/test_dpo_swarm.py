"""`node0 train` with ``data.kind: dpo`` over 3 real daemons equals single-process PEFT with
the TRL-matching DPO loss (tiny model), quarantines bad pairs without losing the others, and a
resumed run continues the same curve reusing its cached reference log-probs."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest

from tests.fixtures import (
    SPLIT,
    dpo_train_config,
    local_swarm,
    max_relative,
    peft_dpo_reference,
    run_train,
    stage_adapter_union,
    write_jsonl,
)
from training.trainer import REFERENCE_CACHE

pytestmark = pytest.mark.integration

LOSS_TOLERANCE = 1e-4
"""Per-step DPO loss, relative (measured in one process: ~5e-6)."""
ADAPTER_TOLERANCE = 2e-3
"""Final adapter, max relative difference per tensor (tests/training/test_dpo_step.py says
why it is looser than the loss's)."""


def bad_pairs(tmp_path: Path) -> Path:
    """Two pairs the loader must quarantine: an empty chosen completion, and a prompt longer
    than max_length."""
    good = json.loads(
        (Path(__file__).parents[2] / "samples/dpo/gastown_preferences.train.jsonl")
        .read_text()
        .splitlines()[0]
    )
    empty = {**good, "id": "dpo-" + "e" * 16, "chosen": [{"speaker": "assistant", "text": " "}]}
    long_prompt = [{"speaker": "user", "text": "bd ready please. " * 200}]
    too_long = {**good, "id": "dpo-" + "f" * 16, "prompt": long_prompt}
    return write_jsonl(tmp_path / "bad.jsonl", [empty, too_long])


def config(model_dir: Path, tmp_path: Path, **update) -> dict:
    raw = dpo_train_config(model_dir, **update)
    raw["data"]["train"] = [*raw["data"]["train"], str(bad_pairs(tmp_path))]
    return raw


@cache
def reference(model_dir: str, tmp: str):
    return peft_dpo_reference(Path(model_dir), config(Path(model_dir), Path(tmp)))


def test_ten_dpo_steps_over_three_daemons_equal_single_process_peft(tiny_model_dir, tmp_path):
    ref_losses, ref_metrics, ref_adapter = reference(str(tiny_model_dir), str(tmp_path))
    with local_swarm(tmp_path, str(tiny_model_dir), SPLIT):
        proc, record = run_train(
            tmp_path, tmp_path / "swarm.json", config(tiny_model_dir, tmp_path, run_id="dpo-eq")
        )
    losses = record["losses"]
    rel = max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses, strict=True))
    adapter_rel = max_relative(stage_adapter_union(tmp_path / "peer-state", "dpo-eq"), ref_adapter)
    dpo = record["dpo"]
    margins = [m["rewards/margins"] for m in dpo["steps"]]
    print(
        f"DPO over 3 daemons: loss {losses[0]:.6f} -> {losses[-1]:.6f}, per-step max rel diff "
        f"{rel:.2e}, adapter max rel diff {adapter_rel:.2e}; margins {margins}"
    )
    assert len(losses) == 10
    assert rel <= LOSS_TOLERANCE and adapter_rel <= ADAPTER_TOLERANCE
    assert (
        max(abs(a - b["rewards/margins"]) for a, b in zip(margins, ref_metrics, strict=True))
        <= LOSS_TOLERANCE
    )
    # the progress line carries the reward metrics
    assert "rewards/chosen" in proc.stderr and "accuracy" in proc.stderr
    # held-out preference figures before and after, the reference computed once per pair
    before, after = record["before"]["heldout_dpo"], record["after"]["heldout_dpo"]
    assert before["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # step 0: policy = reference
    assert after["loss"] < before["loss"]
    cache_info = dpo["reference_cache"]
    run_dir = tmp_path / "runs" / record["run_id"]
    cached = json.loads((run_dir / REFERENCE_CACHE).read_text())
    assert cached["provenance"]["reference"] == "base (adapters off)"
    assert cache_info["computed"] == len(cached["pairs"])  # never a pair twice
    assert cache_info["reused"] > 0  # held-out pairs after training, train pairs of epoch 2
    # bad input: quarantined with reasons, the rest trained
    quarantined = {q["id"]: q["reason"] for q in record["data"]["train"]["quarantined"]}
    assert "empty completion: chosen" in quarantined["dpo-" + "e" * 16]
    assert "prompt fills max_length" in quarantined["dpo-" + "f" * 16]
    assert json.loads((run_dir / "state.json").read_text())["state"] == "done"


@pytest.mark.slow
def test_a_resumed_dpo_run_continues_the_curve_with_its_cached_reference(tiny_model_dir, tmp_path):
    ref_losses, _, ref_adapter = reference(str(tiny_model_dir), str(tmp_path))
    cfg = config(tiny_model_dir, tmp_path, run_id="dpo-resume")
    with local_swarm(tmp_path, str(tiny_model_dir), SPLIT):
        _, first = run_train(tmp_path, tmp_path / "swarm.json", cfg, "--steps", "5")
    first_dir = tmp_path / "runs" / first["run_id"]
    with local_swarm(tmp_path, str(tiny_model_dir), SPLIT):
        _, second = run_train(tmp_path, tmp_path / "swarm.json", cfg, "--resume", str(first_dir))
    losses = first["losses"] + second["losses"]
    rel = max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses, strict=True))
    print(f"resumed DPO curve max relative difference {rel:.2e}")
    assert rel <= LOSS_TOLERANCE
    assert second["dpo"]["reference_cache"]["reused"] > 0
    adapter = stage_adapter_union(tmp_path / "peer-state", "dpo-resume")
    assert max_relative(adapter, ref_adapter) <= ADAPTER_TOLERANCE
