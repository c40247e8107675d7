"""How an inference session takes a stage's refusal: by its reason. In process, against real
gRPC daemons (tiny model): a refusal another replica may not give (full, session evicted) fails
over to the next replica; with none left, or for one every replica would give (a prompt past
the context window, an adapter nobody holds), the error is the reason's family."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack

import pytest

from base.dht_records import StageRecord
from base.errors import ExitCode, RequestError, SwarmError
from base.refusals import Reason, reason_of
from base.sampler import SamplingParams
from inference.pipeline_session import PipelineSession
from tests.fixtures import NUM_LAYERS, stage_server

GREEDY = SamplingParams()


@pytest.fixture(scope="module")
def daemons(tiny_models):
    """Two daemons serving all layers in one stage; each holds at most two sessions."""
    model_dir = tiny_models[False]
    with ExitStack() as stack:
        servers = [
            stack.enter_context(stage_server(model_dir, [(0, NUM_LAYERS)], peer_id=peer))
            for peer in ("peer-a", "peer-b")
        ]
        records = {
            peer: [
                StageRecord(
                    model=str(model_dir),
                    start=s,
                    end=e,
                    num_layers=NUM_LAYERS,
                    endpoint=endpoint,
                    peer_id=peer,
                )
                for s, e in sorted(executor.stages)
            ]
            for (executor, _, endpoint), peer in zip(servers, ("peer-a", "peer-b"), strict=True)
        }
        yield str(model_dir), [executor for executor, _, _ in servers], records


def session(model: str, records, **kwargs) -> PipelineSession:
    kwargs = {"max_length": 32, "step_timeout": 10.0, **kwargs}
    return PipelineSession(lambda: records, model, **kwargs)


def test_prompt_past_the_context_window_and_unknown_adapter_are_request_errors(daemons):
    model, _, records = daemons

    async def run(**kwargs):
        s = session(model, records["peer-a"] + records["peer-b"], **kwargs)
        try:
            await s.open()
        finally:
            await s.close()

    with pytest.raises(RequestError) as info:
        asyncio.run(run(max_length=100_000))
    assert reason_of(info.value) is Reason.PROMPT_TOO_LONG
    assert info.value.exit_code == ExitCode.REQUEST == 6
    with pytest.raises(RequestError) as info:  # every replica was asked
        asyncio.run(run(adapters=("nobody-has-it",)))
    assert reason_of(info.value) is Reason.UNKNOWN_ADAPTER
    assert info.value.exit_code == ExitCode.REQUEST


def test_full_daemons_fail_over_and_with_none_free_it_is_a_swarm_error(daemons):
    model, (first, second), records = daemons

    async def run():
        held = [session(model, records["peer-a"]) for _ in range(2)]
        try:
            for s in held:  # peer-a is now full
                await s.open()
            alone = session(model, records["peer-a"])
            with pytest.raises(SwarmError) as info:
                await alone.open()
            await alone.close()
            spare = session(model, records["peer-a"] + records["peer-b"])
            try:
                route = await spare.open()
            finally:
                await spare.close()
            return info.value, route
        finally:
            for s in held:
                await s.close()

    error, route = asyncio.run(run())
    assert reason_of(error) is Reason.SESSION_CAPACITY
    assert error.exit_code == ExitCode.SWARM == 5
    assert {r.peer_id for r in route} == {"peer-b"}


def test_an_evicted_session_fails_over_and_replays(daemons):
    model, (first, second), records = daemons

    async def run():
        s = session(model, records["peer-a"] + records["peer-b"])
        try:
            await s.open()
            await s.step([5, 6, 7], 0, sampling=GREEDY)
            assert first.sessions.close(s.hops[0].client.session_id)  # evicted on peer-a
            response = await s.step([8], 3, sampling=GREEDY)
            return s.failovers, [h.record.peer_id for h in s.hops], response.cache_length
        finally:
            await s.close()

    failovers, peers, cache_length = asyncio.run(run())
    assert failovers == 1 and peers == ["peer-b"]
    assert cache_length == 4
