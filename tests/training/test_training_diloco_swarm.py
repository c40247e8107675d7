"""`averaging: {mode: diloco}` in `node0 train`: two trainers, two replicas of every stage.

K = 2 over 4 steps: the stages take local AdamW steps at steps 1 and 3 (no averaging round) and
average their pseudo-gradients at steps 2 and 4 (lora/diloco.py, through the usual averaging
round), then apply them with outer Nesterov SGD. After step 4, an outer step, the replicas hold
the same adapter; their checkpoints keep the outer state, and the run record says the mode.

The second trainer starts a few seconds after the first: rounds are matched by outer step (the
outer step is in the matchmaking key, and a replica at an outer step waits for a partner whose
trainer is still in the local steps before it: lora/averaging.py), so every outer step either
trainer runs is averaged with the other replica, and no replica has to copy its partner's state.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from tests.fixtures import local_swarm, train_config
from tests.training.test_training_int8_averaging import SPLIT, finish, start_trainer

pytestmark = pytest.mark.integration

STEPS, K = 4, 2
START_GAP = 6.0  # seconds between the two trainers' starts


def checkpoint(tmp_path: Path, peer: str) -> dict:
    (path,) = (tmp_path / "peer-state" / peer / "checkpoints" / "diloco-run").glob("eq-L*.pt")
    return torch.load(path, weights_only=True)


# slow: tests/lora/test_diloco.py averages outer steps over real hivemind in the default tier
@pytest.mark.slow
def test_two_trainers_started_apart_average_every_outer_step_to_identical_adapters(
    tiny_model_dir, tmp_path
):
    config = train_config(
        tiny_model_dir,
        run_id="diloco-run",
        steps=STEPS,
        replicas=2,
        checkpoint_every=STEPS,
        reroute_timeout=180.0,
        averaging={"mode": "diloco", "local_steps": K, "outer_lr": 0.7, "outer_momentum": 0.9},
    )
    with local_swarm(tmp_path, str(tiny_model_dir), SPLIT):
        procs = [start_trainer(tmp_path, config, 0)]
        time.sleep(START_GAP)
        procs.append(start_trainer(tmp_path, config, 1))
        records = [finish(p, timeout=480) for p in procs]
    for record in records:
        assert record["averaging_mode"] == {
            "mode": "diloco",
            "compression": "none",
            "replicas": 2,
            "local_steps": K,
            "outer_optimizer": "sgd-nesterov",
            "outer_lr": 0.7,
            "outer_momentum": 0.9,
        }
        notes = record["averaging"]  # one a step this trainer ran (a late one may follow
        assert 3 <= len(notes) <= STEPS, notes  # its replicas past step 1: rounds still at 2, 4)
        for step, note in enumerate(notes, start=STEPS - len(notes) + 1):
            if step % K:  # a local step: no round
                assert note.startswith(f"diloco local step {step % K}/{K}"), note
                assert "averaged" not in note, note
            else:  # the outer step: one round, with the other replica
                assert note.startswith("diloco outer step: averaged with 1 replica"), note
                assert "local" not in note and "resynced" not in note, note
    worst = 0.0
    for k in range(3):
        a, b = (checkpoint(tmp_path, f"{r}{k}") for r in "ab")
        for saved in (a, b):  # the outer state travels with the checkpoint
            diloco = saved["extra"]["diloco"]
            assert diloco["inner_steps"] == STEPS and diloco["local_steps"] == K
            assert diloco["outer_optimizer"]["state"], "no outer momentum saved"
            outer = diloco["outer_params"]
            assert len(outer) == len(saved["adapter_state"])
        worst = max(
            worst,
            *(
                float((a["adapter_state"][n] - b["adapter_state"][n]).abs().max())
                for n in a["adapter_state"]
            ),
        )
    print(f"diloco replicas' adapters max abs difference {worst:.1e}")
    assert worst <= 1e-6
