"""How the gatherer takes a stage's refusal of ``PullWeights``: by its reason. In process, over
real gRPC: a refusal another replica may not give (the adapter, the span) moves on to the next
replica; one every replica would give (the model) fails the gather at once; the error's family
is the reason's (exit 6 for an adapter no replica holds, 5 for layers no replica hosts).
Nothing is written in any case."""

from __future__ import annotations

import pytest

from base.errors import ExitCode, RequestError, SwarmError
from base.refusals import Reason, reason_of
from checkpoint_gather.gather import GatherOptions, StagePlan, gather_stages
from checkpoint_gather.weights_client import PullTarget, StagePull
from tests.fixtures import STAGES, stage_server


@pytest.fixture(scope="module")
def daemons(tiny_models):
    """A daemon serving the whole route, and one that serves only layers [2, 5)."""
    model_dir = tiny_models[False]
    with (
        stage_server(model_dir, peer_id="full") as full,
        stage_server(model_dir, [(2, 5)], peer_id="partial") as partial,
    ):
        yield model_dir, full[2], partial[2]


def plans(*endpoints: str) -> list[StagePlan]:
    return [
        StagePlan(s, e, tuple(PullTarget(ep, f"peer-{i}", s, e) for i, ep in enumerate(endpoints)))
        for s, e in STAGES
    ]


def gather(model_dir, out, plan, **options):
    options = {"model": str(model_dir), "out_dir": out, "gguf_types": (), **options}
    return gather_stages(GatherOptions(**options), plan, tokenizer_dir=model_dir)


def test_an_adapter_no_replica_holds_is_a_request_error(daemons, tmp_path):
    model_dir, full, partial = daemons
    out = tmp_path / "out"
    with pytest.raises(RequestError) as info:
        gather(model_dir, out, plans(full, full), merge_adapters=("nope",))
    assert reason_of(info.value) is Reason.UNKNOWN_ADAPTER
    assert info.value.exit_code == ExitCode.REQUEST == 6
    assert str(info.value).count(f"{Reason.UNKNOWN_ADAPTER}: ") == 2  # both replicas asked
    assert not out.exists()


def test_a_replica_without_the_span_is_skipped(daemons, tmp_path):
    model_dir, full, partial = daemons
    with pytest.raises(SwarmError) as info:  # only the partial daemon: no replica left
        gather(model_dir, tmp_path / "none", plans(partial))
    assert reason_of(info.value) is Reason.SPAN_NOT_HOSTED
    assert info.value.exit_code == ExitCode.SWARM == 5
    result = gather(model_dir, tmp_path / "out", plans(partial, full))
    assert [s.target.endpoint for s in result.stages] == [full, partial, full]


def test_another_model_fails_at_once(daemons, tmp_path):
    model_dir, full, partial = daemons
    out = tmp_path / "out"
    with pytest.raises(RequestError) as info:
        gather(model_dir, out, plans(full, partial), model="another-model")
    assert reason_of(info.value) is Reason.WRONG_MODEL
    assert info.value.exit_code == ExitCode.REQUEST
    assert Reason.SPAN_NOT_HOSTED not in str(info.value)  # the fallback was not asked
    assert not out.exists()


def test_an_empty_pull_is_an_invalid_request(daemons):
    model_dir, full, _ = daemons
    with pytest.raises(RequestError) as info:
        StagePull(PullTarget(full, "full", 0, 2), str(model_dir), base=False).run()
    assert reason_of(info.value) is Reason.INVALID_REQUEST
