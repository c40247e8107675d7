"""Two trainers, two replicas of every stage: hivemind-averaged LoRA training over real daemons.

Trainer 0 and trainer 1 (different data shards, one run) each drive their own replica of every
stage; each optimizer step the two replicas of a stage average their adapter gradients. The
replicas end with the same adapter and the held-out loss falls. Then a replica is SIGKILLed
mid-training: the other trainer goes on, the killed one's trainer waits (degraded), and the
restarted replica rejoins with the current adapter state.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from node.local_swarm import SwarmState, restart_peer
from tests.fixtures import REPO, local_swarm, train_config

pytestmark = pytest.mark.integration

SPLIT = [(f"{r}{k}", [(2 * k, 2 * k + 2)]) for r in "ab" for k in range(3)]


class Trainer:
    """A `node0 train` subprocess whose stderr lines are collected as they arrive."""

    def __init__(self, tmp_path: Path, config: dict, shard: int):
        path = tmp_path / f"trainer{shard}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.lines: list[tuple[float, str]] = []  # stderr: progress
        self.out: list[str] = []  # stdout: the summary
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "node.cli",
                "train",
                "--config",
                str(path),
                "--swarm-file",
                str(tmp_path / "swarm.json"),
                "--shard",
                f"{shard}/2",
                "--runs-dir",
                str(tmp_path / f"runs{shard}"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            start_new_session=True,
        )
        self._readers = [
            threading.Thread(target=self._read, args=(stream, sink), daemon=True)
            for stream, sink in (
                (self.proc.stderr, self._line),
                (self.proc.stdout, self.out.append),
            )
        ]
        for reader in self._readers:
            reader.start()

    def _line(self, line: str) -> None:
        self.lines.append((time.monotonic(), line.rstrip()))

    @staticmethod
    def _read(stream, sink) -> None:
        for line in stream:
            sink(line)

    def steps(self) -> list[float]:
        return [t for t, line in self.lines if line.startswith("[train] step")]

    def finish(self, timeout: float) -> dict:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for reader in self._readers:
            reader.join(5)
        log = "\n".join(line for _, line in self.lines)
        assert self.proc.returncode == 0, log[-4000:]
        summary = json.loads("".join(self.out).strip().splitlines()[-1])
        return json.loads((Path(summary["run_dir"]) / "run_record.json").read_text())


def replica_adapters(state_dir: Path, run_id: str, peer: str) -> dict[str, torch.Tensor]:
    files = list((state_dir / peer / "checkpoints" / run_id).glob("eq-L*.pt"))
    assert len(files) == 1, files
    return torch.load(files[0], weights_only=True)["adapter_state"]


def max_replica_difference(state_dir: Path, run_id: str) -> float:
    worst = 0.0
    for k in range(3):
        a = replica_adapters(state_dir, run_id, f"a{k}")
        b = replica_adapters(state_dir, run_id, f"b{k}")
        assert sorted(a) == sorted(b)
        worst = max(worst, *(float((a[key] - b[key]).abs().max()) for key in a))
    return worst


def averaging_config(model_dir: Path, run_id: str, steps: int) -> dict:
    # default averaging settings: a trainer lagging the other by more than the matchmaking
    # window is waited for (lora.replica_presence), so every round averages
    return train_config(
        model_dir, run_id=run_id, steps=steps, replicas=2, checkpoint_every=2, reroute_timeout=180.0
    )


# slow: test_training_int8_averaging.py runs the same two trainers over two replicas of every
# stage (with int8 parts) in the default tier, and tests/lora/test_lora_averaging.py the
# float all-reduce over real hivemind
@pytest.mark.slow
def test_two_trainers_average_every_round_to_identical_adapters(tiny_model_dir, tmp_path):
    config = averaging_config(tiny_model_dir, "avg-run", steps=6)
    with local_swarm(tmp_path, str(tiny_model_dir), SPLIT):
        trainers = [Trainer(tmp_path, config, shard) for shard in (0, 1)]
        records = [t.finish(timeout=480) for t in trainers]
    for record in records:
        assert len(record["averaging"]) == 6
        assert all(
            "averaged with 1 replica" in note and "local" not in note
            for note in record["averaging"]
        ), record["averaging"]
        assert record["after"]["heldout_loss"] < record["before"]["heldout_loss"]
    worst = max_replica_difference(tmp_path / "peer-state", "avg-run")
    print(
        f"replicas' adapters max abs difference {worst:.2e}; held-out loss "
        + ", ".join(
            f"{r['before']['heldout_loss']:.4f} -> {r['after']['heldout_loss']:.4f}"
            for r in records
        )
    )
    assert worst <= 1e-6


@pytest.mark.slow
def test_killed_replica_training_goes_on_and_the_restarted_one_rejoins(tiny_model_dir, tmp_path):
    config = averaging_config(tiny_model_dir, "fault-run", steps=14)
    with local_swarm(tmp_path, str(tiny_model_dir), SPLIT) as state:
        trainers = [Trainer(tmp_path, config, shard) for shard in (0, 1)]
        deadline = time.monotonic() + 300
        while len(trainers[1].steps()) < 4:
            assert time.monotonic() < deadline and trainers[1].proc.poll() is None
            time.sleep(0.2)
        # which replica of layers [2, 4) does trainer 1 use? kill that one, whole group
        route = next(line for _, line in trainers[1].lines if line.startswith("[route]"))
        endpoint = route.split("[2,4)@", 1)[1].split()[0]
        victim = next(
            p
            for p in state.peers
            if p.name in ("a1", "b1") and f"serving on {endpoint}" in Path(p.log).read_text()
        )
        killed_at = time.monotonic()
        os.killpg(victim.pid, signal.SIGKILL)
        before = len(trainers[0].steps())
        while len(trainers[0].steps()) < before + 2:
            assert time.monotonic() < deadline and trainers[0].proc.poll() is None
            time.sleep(0.2)
        gap = trainers[0].steps()[-2] - killed_at
        print(f"trainer 0 completed its next step {gap:.1f} s after the kill")
        restart_peer(tmp_path / "swarm.json", victim.name)
        records = [t.finish(timeout=600) for t in trainers]
        peers = SwarmState.load(tmp_path / "swarm.json").peers
        assert any(p.name == victim.name and p.pid != victim.pid for p in peers)
    assert records[1]["reroutes"] >= 1
    assert any("[degraded]" in line for _, line in trainers[1].lines)
    # the restarted replica took the current adapter state from its live replica
    restarted_log = Path(victim.log).read_text().split("received SIGTERM")[0]
    # either when its job opened or through the first shared round's state check
    loaded = re.findall(
        r"loaded eq at step (\d+) from a replica|loaded \S+'s state \(step "
        r"(\d+)\)",
        restarted_log,
    )
    print("restarted replica took state at step(s):", loaded)
    assert loaded and max(int(a or b) for a, b in loaded) >= 4
    for record in records:
        assert record["after"]["heldout_loss"] < record["before"]["heldout_loss"]
    # a round straddling the rejoin is repaired by the next shared round's state check
    worst = max_replica_difference(tmp_path / "peer-state", "fault-run")
    print(f"after the fault, replicas' adapters max abs difference {worst:.2e}")
    assert worst <= 1e-6
