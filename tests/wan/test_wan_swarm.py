"""The swarm over an emulated WAN: 50 ms RTT and 1 % loss between every pair of hosts.

Each stage daemon (and each averaging replica) runs in its own network namespace behind a
router namespace that delays every TCP connection through a userspace proxy and drops 1 % of
the packets it receives (:mod:`bench.wan_net`); the test process is a host too. Greedy
generation equals the single-process reference, a training step equals the same step over
loopback, and averaging rounds complete. Opt in with ``make test-wan`` (needs root, ``ip``,
``nft``); skipped with the reason elsewhere.
"""

from __future__ import annotations

import pytest
import torch

from bench.wan_averaging import run_pair
from bench.wan_net import WanNetwork, unavailable_reason
from bench.wan_swarm import wan_swarm
from inference.swarm_client import SwarmClient
from tests.fixtures import (
    SPLIT,
    local_swarm,
    reference_generate,
    run_train,
    swarm_generate,
    train_config,
)

pytestmark = [pytest.mark.wan, pytest.mark.timeout(900)]

RTT_MS = 50.0
LOSS = 0.01
PROMPTS = [[5, 17, 99, 3, 42], [200, 100, 50, 25, 12, 6, 3]]
NEW_TOKENS = 8
TRAIN_STEPS = 2


@pytest.fixture(scope="module")
def net():
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"cannot emulate a WAN here: {reason}")
    with WanNetwork(3, rtt_ms=RTT_MS, loss=LOSS) as network:
        yield network


@pytest.fixture(scope="module")
def wan(net, tiny_model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("wan-swarm")
    with wan_swarm(net, work, str(tiny_model_dir), SPLIT, max_message_bytes=1 << 20) as state:
        yield work, state


def stage_adapters(state_dir, run_id: str) -> dict[str, torch.Tensor]:
    union = {}
    files = sorted(state_dir.glob(f"*/checkpoints/{run_id}/eq-L*.pt"))
    assert len(files) == 3, files
    for path in files:
        union.update(torch.load(path, weights_only=True)["adapter_state"])
    return union


def test_greedy_generation_over_the_wan_equals_single_process(wan, tiny_model, tiny_model_dir):
    _, state = wan
    client = SwarmClient(str(tiny_model_dir), state.initial_peers)
    try:
        client.wait_for_route()
        got = swarm_generate(client, PROMPTS, max_new_tokens=NEW_TOKENS)
    finally:
        client.close()
    expected = reference_generate(tiny_model, PROMPTS, NEW_TOKENS)
    for result, (tokens, _) in zip(got, expected, strict=True):
        assert result.token_ids == tokens
    # every token crossed three delayed hops: the proxy is really in the path
    per_token = min(r.elapsed / len(r.token_ids) for r in got)
    print(f"per-token time over {RTT_MS:g} ms RTT: {per_token * 1000:.0f} ms")
    assert per_token >= 3 * RTT_MS / 1000 * 0.9


def test_training_steps_over_the_wan_equal_loopback(wan, tiny_model_dir, tmp_path):
    work, _ = wan
    config = train_config(
        tiny_model_dir, run_id="wan-run", steps=TRAIN_STEPS, checkpoint_every=TRAIN_STEPS
    )
    _, over_wan = run_train(tmp_path, work / "swarm.json", config)
    loop_dir = tmp_path / "loopback"
    with local_swarm(loop_dir, str(tiny_model_dir), SPLIT):
        _, loopback = run_train(loop_dir, loop_dir / "swarm.json", config)
    assert len(over_wan["losses"]) == TRAIN_STEPS
    rel = max(
        abs(a - b) / abs(b) for a, b in zip(over_wan["losses"], loopback["losses"], strict=True)
    )
    wan_adapter = stage_adapters(work / "peer-state", "wan-run")
    loop_adapter = stage_adapters(loop_dir / "peer-state", "wan-run")
    adapter_diff = max(float((wan_adapter[k] - loop_adapter[k]).abs().max()) for k in loop_adapter)
    print(f"losses {over_wan['losses']} vs {loopback['losses']}; adapter diff {adapter_diff:.1e}")
    assert rel <= 1e-6
    assert adapter_diff <= 1e-7


@pytest.mark.parametrize("compression", ["none", "int8", "int4"])
def test_averaging_rounds_complete_over_the_wan(net, tiny_model_dir, tmp_path, compression):
    result = run_pair(net, tmp_path, tiny_model_dir, compression=compression, steps=3)
    a, b = result["replicas"]
    for replica in (a, b):
        assert len(replica["rounds"]) == 3
        assert all(r["averaged"] and r["consistent"] for r in replica["rounds"]), replica
        # equal results on both replicas: no round had to copy a groupmate's state
        assert not any(r["resynced"] for r in replica["rounds"]), replica
    assert abs(a["heldout_loss"] - b["heldout_loss"]) <= 1e-3 * abs(b["heldout_loss"])
    print(
        f"{compression}: {result['bytes_per_round'] / 1e3:.0f} kB a round on the wire, "
        f"{result['payload_bytes_per_round'] / 1e3:.0f} kB payload, "
        f"{result['seconds_per_round']:.2f} s a round"
    )
