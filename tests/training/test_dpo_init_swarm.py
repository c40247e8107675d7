"""DPO over 3 real daemons that starts from an adapter's weights (``init_from``) and uses the
same adapter as its reference: at step 0 the policy's log-probs are the reference's, so the
rewards and margins start at 0 and the loss at ln 2; the run record keeps the init adapter's
sha256."""

from __future__ import annotations

import hashlib
import json
import math

import pytest

from tests.fixtures import SPLIT, dpo_train_config, local_swarm, make_adapter, run_train

pytestmark = pytest.mark.integration


def test_dpo_from_the_sft_adapter_starts_at_its_log_probs(tiny_model_dir, tmp_path):
    sft = tmp_path / "sft"
    make_adapter(tiny_model_dir, "sft", 1, sft)  # B far from zero: the SFT adapter moves the model
    cfg = dpo_train_config(
        tiny_model_dir,
        adapter="dpo",
        init_from=str(sft),
        run_id="dpo-init",
        checkpoint_every=0,
        dpo={"beta": 0.1, "reference_adapter": "sft"},
    )
    cfg["steps"] = 2
    with local_swarm(tmp_path, str(tiny_model_dir), SPLIT, adapters={"sft": str(sft)}):
        proc, record = run_train(tmp_path, tmp_path / "swarm.json", cfg)
        # the same adapter name again, on a fresh run: its weights are trained, not sft's
        again = {**cfg, "run_id": "dpo-init-2"}
        refused, _ = run_train(tmp_path, tmp_path / "swarm.json", again, expect=3)
        # without init_from the adapter starts at zero B: the base, not the reference
        fresh = {**cfg, "adapter": "fresh", "run_id": "fresh"}
        fresh.pop("init_from")
        fresh["steps"] = 1
        _, contrast = run_train(tmp_path, tmp_path / "swarm.json", fresh)
    before = record["before"]["heldout_dpo"]
    first = record["dpo"]["steps"][0]
    print(f"step 0 from the SFT adapter: held-out {before}, first step {first}")
    for figures in (before, first):  # policy = reference at step 0 (float32 end to end)
        assert figures["rewards/chosen"] == pytest.approx(0.0, abs=1e-5)
        assert figures["rewards/rejected"] == pytest.approx(0.0, abs=1e-5)
        assert figures["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert record["losses"][0] == pytest.approx(math.log(2), abs=1e-5)
    assert abs(contrast["before"]["heldout_dpo"]["rewards/chosen"]) > 1e-3
    assert record["after"]["heldout_dpo"]["rewards/margins"] != pytest.approx(0.0, abs=1e-7)
    init = record["init_adapter"]
    weights = (sft / "adapter_model.safetensors").read_bytes()
    assert init["sha256"] == hashlib.sha256(weights).hexdigest()
    assert "[init] 'dpo' starts from" in proc.stderr
    assert "already on" in refused.stderr
    state = json.loads((tmp_path / "runs" / record["run_id"] / "state.json").read_text())
    assert state["state"] == "done"
