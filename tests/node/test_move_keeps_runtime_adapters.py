"""A daemon that moves (``stages: auto``) keeps the adapters loaded into it at run time.

Three auto-placed daemons over the tiny 6-layer model (3 layers each: two cover the model, the
third is a replica); a registry version's adapter is loaded into all of them with
``LoadAdapter``; the only replica of one span is killed, the spare moves to cover it, and the
adapter is still served on the whole route with the tokens PEFT gives in one process."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from base.errors import SwarmError
from base.hashing import sha256_file
from base.routing import plan_route
from inference.registry_models import RegisteredModel, load_on_swarm
from inference.swarm_client import SwarmClient
from node.local_swarm import peer_id_of
from tests.fixtures import kill_group, local_swarm, make_adapter, reference_generate

pytestmark = pytest.mark.integration

NUM_BLOCKS = 3
PLACEMENT = {
    "num_blocks": NUM_BLOCKS,
    "rebalance_period": 2.0,
    "confirmations": 2,
    "join_jitter": 1.0,
    "drain": 1.0,
    "min_stay": 600.0,
    "balance_quality": 0.2,  # measured throughput on a shared CPU is noisy: repairs only
}
# the dead record expires (ttl 4 s), two agreeing checks, the claim, the drain, the load: ~15 s
# on an idle machine; generous for cores the other tests share
MOVE_BOUND_S = 120.0
PROMPT = [5, 17, 99, 3, 42, 7, 8]
NEW_TOKENS = 12
ADAPTER = "deacon-v7"


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.5)
    return value


def _layout(client: SwarmClient) -> dict[str, tuple[int, int]] | None:
    """Each online peer's span once every peer settled (none joining), else None."""
    records = client.records()
    if any(r.state == "joining" for r in records):
        return None
    online = {r.peer_id: r.span for r in records if r.state == "online"}
    try:
        plan_route(records, client.model)
    except SwarmError:
        return None
    return online


def test_a_moved_daemon_still_serves_its_run_time_adapter(tiny_model_dir, tmp_path):
    adapter_dir = tmp_path / "adapter"
    make_adapter(tiny_model_dir, ADAPTER, 3, adapter_dir)
    version = RegisteredModel(
        version=ADAPTER,
        base_model=str(tiny_model_dir),
        adapter=ADAPTER,
        sha256=sha256_file(adapter_dir / "adapter_model.safetensors"),
        path=adapter_dir,
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    plain, _ = reference_generate(base, [PROMPT], NEW_TOKENS)[0]
    peft = PeftModel.from_pretrained(base, adapter_dir).eval()
    expected, _ = reference_generate(peft, [PROMPT], NEW_TOKENS)[0]
    assert expected != plain  # the adapter changes the tokens: the comparison below means it

    peers = [(f"p{i}", "auto") for i in range(3)]
    with local_swarm(
        tmp_path / "swarm", str(tiny_model_dir), peers, placement=PLACEMENT, torch_threads=1
    ) as state:
        client = SwarmClient(str(tiny_model_dir), state.initial_peers)
        try:
            layout = _wait(
                lambda: (lay := _layout(client)) and len(lay) == 3 and lay, 90, "3 placed"
            )
            assert load_on_swarm(client.records(), version) == 3
            owners: dict[tuple[int, int], list[str]] = {}
            for peer_id, span in layout.items():
                owners.setdefault(span, []).append(peer_id)
            lonely = sorted(s for s, ids in owners.items() if len(ids) == 1)
            victim_span = lonely[0]
            victim_id = owners[victim_span][0]
            kill_group(next(p for p in state.peers if peer_id_of(p) == victim_id).pid)
            killed_at = time.monotonic()

            def repaired():
                now = _layout(client)
                if not now or victim_id in now or victim_span not in now.values():
                    return None
                online = [r for r in client.records() if r.state == "online"]
                return all(ADAPTER in r.adapters for r in online) and now

            after = _wait(repaired, MOVE_BOUND_S, "the lost span covered, adapter announced")
            print(f"moved in {time.monotonic() - killed_at:.1f} s: {layout} -> {after}")
            moved = [p for p, span in after.items() if span != layout[p]]
            assert len(moved) == 1 and after[moved[0]] == victim_span

            tokenizer = client.load_tokenizer()
            result = asyncio.run(
                client.generate_once(
                    tokenizer, PROMPT, max_new_tokens=NEW_TOKENS, adapters=(ADAPTER,)
                )
            )
            assert result.token_ids == expected
        finally:
            client.close()
