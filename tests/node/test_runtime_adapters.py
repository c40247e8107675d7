"""A registered version's adapter loaded into running daemons (``Adapters.LoadAdapter``):
the same tokens as the adapter loaded from the daemons' config, each daemon holding only its
stages' slice, and the refusals (sha256, base model, a name held with other weights)."""

from __future__ import annotations

import asyncio
import json

import pytest
from safetensors import safe_open

from base.errors import ConfigError, RequestError
from inference.registry_models import load_on_swarm, resolve_registered
from inference.swarm_client import SwarmClient
from registry import Registry
from tests.fixtures import local_swarm, make_adapter

pytestmark = pytest.mark.integration

SPLIT = [("s0", [(0, 2)]), ("s1", [(2, 4)]), ("s2", [(4, 6)])]
PROMPT = [5, 17, 99, 3, 42, 8]
NEW = 12


def test_load_adapter_at_run_time_equals_config_loading(tiny_model_dir, tmp_path):
    adapter, other = tmp_path / "adapter", tmp_path / "other"
    make_adapter(tiny_model_dir, "deacon", 1, adapter)
    make_adapter(tiny_model_dir, "deacon", 2, other)
    scores = {"categories": {"x": {"score": 90}}, "composite": 90, "gate": {"passed": True}}
    registry = Registry(tmp_path / "registry.db", tmp_path / "store")
    for source in (adapter, other):
        registry.register(
            role="deacon",
            base_model=str(tiny_model_dir),
            adapter_dir=source,
            eval_scores=scores,
        )
    registry.close()
    v1 = resolve_registered("deacon-v1", tmp_path / "registry.db")
    v2 = resolve_registered("deacon-v2", tmp_path / "registry.db")
    assert v1.base_model == str(tiny_model_dir) and v1.adapter == "deacon-v1"
    assert resolve_registered("smollm2-135m", tmp_path / "registry.db") is None
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as f:
        total_tensors = len(list(f.keys()))  # noqa: SIM118

    with local_swarm(
        tmp_path / "swarm", str(tiny_model_dir), SPLIT, adapters={"from-config": str(adapter)}
    ) as state:
        client = SwarmClient(str(tiny_model_dir), state.initial_peers)
        try:
            client.wait_for_route()
            tokenizer = client.load_tokenizer()

            def greedy(adapters):
                return asyncio.run(
                    client.generate_once(tokenizer, PROMPT, max_new_tokens=NEW, adapters=adapters)
                ).token_ids

            with pytest.raises(RequestError):  # not loaded yet
                greedy(("deacon-v1",))
            assert load_on_swarm(client.records(), v1) == 3
            assert load_on_swarm(client.records(), v1) == 0  # held already: a no-op
            from_config, run_time = greedy(("from-config",)), greedy(("deacon-v1",))
            assert run_time == from_config
            assert run_time != greedy(())
            # each daemon attached its own two layers' tensors only: together, the file once
            import grpc

            from proto import node0_adapters_pb2 as pb
            from proto import node0_adapters_pb2_grpc as rpc
            from security.active import call_signer
            from security.grpc_auth import secure_channel

            operator = call_signer("host")  # the swarm is private: LoadAdapter is host-only

            counts = []
            for record in sorted(client.records(), key=lambda r: r.start):
                with grpc.insecure_channel(record.endpoint) as channel:
                    reply = rpc.AdaptersStub(secure_channel(channel, operator)).LoadAdapter(
                        pb.LoadAdapterRequest(
                            name="slice-check",
                            base_model=v2.base_model,
                            sha256=v2.sha256,
                            path=str(v2.path),
                        ),
                        timeout=60,
                    )
                counts.append(reply.tensors)
            assert sum(counts) == total_tensors and all(c == total_tensors // 3 for c in counts)

            # refusals, with their reasons
            bad_sha = v2.__class__(**{**v2.__dict__, "adapter": "x1", "sha256": "0" * 64})
            with pytest.raises(RequestError) as err:
                load_on_swarm(client.records(), bad_sha)
            assert err.value.reason == "invalid_request" and "sha256" in str(err.value)
            other_base = v2.__class__(**{**v2.__dict__, "adapter": "x2", "base_model": "other"})
            with pytest.raises(Exception, match="no daemon serves other"):
                load_on_swarm(client.records(), other_base)
            with grpc.insecure_channel(client.records()[0].endpoint) as channel:
                with pytest.raises(grpc.RpcError) as rpc_err:
                    rpc.AdaptersStub(secure_channel(channel, operator)).LoadAdapter(
                        pb.LoadAdapterRequest(
                            name="x3", base_model="llama-7b", sha256=v2.sha256, path=str(v2.path)
                        ),
                        timeout=60,
                    )
            assert dict(rpc_err.value.trailing_metadata())["node0-reason"] == "wrong_model"
            conflict = v2.__class__(**{**v2.__dict__, "adapter": "deacon-v1"})
            with pytest.raises(ConfigError) as err:
                load_on_swarm(client.records(), conflict)
            assert err.value.reason == "adapter_conflict"
            assert greedy(("deacon-v1",)) == from_config  # still serving, unchanged
        finally:
            client.close()
    assert json.loads(json.dumps(v1.__dict__, default=str))["version"] == "deacon-v1"
