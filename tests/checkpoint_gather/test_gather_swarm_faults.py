"""A peer SIGKILLed (its process group) in the middle of ``node0 gather``'s transfer, then its
stage missing from the swarm, then a replacement daemon: each failure is clear and leaves no
output; the rerun after the fix succeeds."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import yaml

from base.errors import ExitCode, PeerFailureError, SwarmError
from checkpoint_gather.gather import GatherOptions, gather
from checkpoint_gather.weights_service import FAULTS_ENV
from inference.swarm_client import SwarmClient
from node.config import DaemonConfig
from node.local_swarm import _launch, _wait_ready, stop_peers
from provenance import RunDir
from tests.fixtures import kill_group, load_causal_lm, local_swarm, logits

pytestmark = pytest.mark.integration

SPLIT = [("s0", [(0, 2), (4, 6)]), ("s1", [(2, 4)])]  # 3 stages, 2 daemons to start
VICTIM = "layers [2, 4)"


class KillOnFirstBytes:
    """A progress sink that SIGKILLs the daemon sending ``VICTIM`` once its first bytes arrived."""

    def __init__(self, pid: int):
        self.pid = pid
        self.tasks: list[str] = []
        self.killed_after: int | None = None

    def add_task(self, description: str, total: int) -> int:
        self.tasks.append(description)
        return len(self.tasks) - 1

    def advance(self, task: int, n: int) -> None:
        if self.killed_after is None and self.tasks[task].startswith(VICTIM):
            self.killed_after = n
            kill_group(self.pid)

    def update(self, task: int, **_fields) -> None:
        pass


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.glob(f".{out.name}*"))


def _start_replacement(state, peer, work: Path):
    """A new daemon for the dead peer's stages, joining the running swarm."""
    config = yaml.safe_load(Path(peer.config).read_text())
    config.update(peer_file=str(work / "replacement.maddrs"), initial_peers=state.initial_peers)
    process = _launch(
        RunDir(Path(state.run_dir)), "replacement", DaemonConfig.model_validate(config)
    )
    try:
        _wait_ready([process], 120)
    except BaseException:
        stop_peers([process])
        raise
    return process


def _wait_until_gone(model, peers, span, timeout=20.0) -> None:
    client = SwarmClient(model, peers)
    try:
        deadline = time.monotonic() + timeout
        while any(r.span == span and r.state == "online" for r in client.records()):
            assert time.monotonic() < deadline, f"the record of {span} did not expire"
            time.sleep(0.5)
    finally:
        client.close()


@pytest.mark.timeout(300)
def test_peer_killed_mid_transfer_then_missing_then_replaced(tiny_model_dir, tmp_path, monkeypatch):
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "delay").write_text("0.05")  # ~85 chunks of 4 KiB per stage: seconds, not ms
    monkeypatch.setenv(FAULTS_ENV, str(faults))
    model = str(tiny_model_dir)
    with local_swarm(tmp_path / "swarm", model, SPLIT) as state:
        monkeypatch.delenv(FAULTS_ENV)
        peers = state.initial_peers
        victim = next(p for p in state.peers if p.name == "s1")
        out = tmp_path / "out"
        options = GatherOptions(
            model=model, out_dir=out, gguf_types=(), chunk_bytes=4096, route_timeout=2.0
        )

        killer = KillOnFirstBytes(victim.pid)
        with pytest.raises(PeerFailureError) as died:
            gather(options, initial_peers=peers, progress=killer)
        assert killer.killed_after is not None
        message = str(died.value)
        assert died.value.exit_code == ExitCode.PEER_FAILURE
        assert "layers [2, 4) could not be pulled" in message and "mid-transfer" in message
        assert "nothing was written" in message
        assert not out.exists() and _leftovers(out) == []

        _wait_until_gone(model, peers, (2, 4))
        with pytest.raises(SwarmError, match="layers 2-3 are served by no online peer") as gone:
            gather(options, initial_peers=peers)
        assert gone.value.exit_code == ExitCode.SWARM
        assert not out.exists()

        (faults / "delay").unlink()
        replacement = _start_replacement(state, victim, tmp_path)
        try:
            result = gather(options, initial_peers=peers)
        finally:
            stop_peers([replacement])
    assert torch.equal(
        logits(load_causal_lm(result.export.hf_dir)), logits(load_causal_lm(tiny_model_dir))
    )
    assert [s.target.start for s in result.stages] == [0, 2, 4]
