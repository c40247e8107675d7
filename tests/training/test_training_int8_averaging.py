"""`averaging.compression: int8` in `node0 train`: two trainers, two replicas of every stage.

Every round averages (blockwise int8 parts, lora/compression.py), the replicas end with the
same adapter (the reducer sends the rounded average itself: lora/shared_results.py) and the
held-out loss falls.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.fixtures import REPO, local_swarm, train_config

pytestmark = pytest.mark.integration

SPLIT = [(f"{r}{k}", [(2 * k, 2 * k + 2)]) for r in "ab" for k in range(3)]
STEPS = 3


def start_trainer(tmp_path: Path, config: dict, shard: int) -> subprocess.Popen:
    path = tmp_path / f"trainer{shard}.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.Popen(
        [sys.executable, "-m", "node.cli", "train", "--config", str(path)]
        + ["--swarm-file", str(tmp_path / "swarm.json"), "--shard", f"{shard}/2"]
        + ["--runs-dir", str(tmp_path / f"runs{shard}")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout: float) -> dict:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err[-4000:]
    summary = json.loads(out.strip().splitlines()[-1])
    return json.loads((Path(summary["run_dir"]) / "run_record.json").read_text())


def adapter(tmp_path: Path, peer: str) -> dict[str, torch.Tensor]:
    (path,) = (tmp_path / "peer-state" / peer / "checkpoints" / "int8-run").glob("eq-L*.pt")
    return torch.load(path, weights_only=True)["adapter_state"]


def test_two_trainers_average_in_int8_to_identical_adapters(tiny_model_dir, tmp_path):
    config = train_config(
        tiny_model_dir,
        run_id="int8-run",
        steps=STEPS,
        replicas=2,
        checkpoint_every=STEPS,
        reroute_timeout=180.0,
        averaging={"compression": "int8"},
    )
    with local_swarm(tmp_path, str(tiny_model_dir), SPLIT):
        procs = [start_trainer(tmp_path, config, shard) for shard in (0, 1)]
        records = [finish(p, timeout=480) for p in procs]
    for record in records:
        assert len(record["averaging"]) == STEPS
        assert all("averaged with 1 replica" in n and "local" not in n for n in record["averaging"])
        assert record["after"]["heldout_loss"] < record["before"]["heldout_loss"]
    worst = 0.0
    for k in range(3):
        a, b = (adapter(tmp_path, f"{r}{k}") for r in "ab")
        worst = max(worst, *(float((a[key] - b[key]).abs().max()) for key in a))
    print(f"int8 replicas' adapters max abs difference {worst:.1e}")
    assert worst <= 1e-6
