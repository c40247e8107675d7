"""Every refusal of the Stage service, over real gRPC against an in-process daemon (tiny model):
each arrives with its reason in the trailing metadata and the status that reason travels with.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

import grpc
import pytest
import torch

from base.refusals import Reason, reason_of, retry_after_of
from lora.averaging import AveragingConfigError
from lora.config import LoraSettings, OptimizerSettings
from proto import node0_pb2, node0_pb2_grpc
from proto.tensor_codec import encode
from tests.fixtures import stage_server
from training.stage_client import StageTrainClient

LORA = LoraSettings(rank=4, alpha=8)


@pytest.fixture(scope="module")
def daemon(tiny_models):
    model_dir = tiny_models[False]
    with stage_server(model_dir) as (executor, _, endpoint):
        channel = grpc.insecure_channel(endpoint)
        try:
            yield SimpleNamespace(
                executor=executor,
                endpoint=endpoint,
                model=str(model_dir),
                stub=node0_pb2_grpc.StageStub(channel),
            )
        finally:
            channel.close()


def refused(call, *args, **kwargs) -> Reason:
    """The reason ``call`` was refused with (its status checked against the reason's)."""
    with pytest.raises(grpc.RpcError) as info:
        result = call(*args, **kwargs)
        if hasattr(result, "__next__"):  # a response stream fails when it is read
            list(result)
    reason = reason_of(info.value)
    assert reason is not None, info.value
    assert info.value.code() == reason.status
    return reason


def open_request(daemon, **update) -> node0_pb2.OpenSessionRequest:
    fields = {"model": daemon.model, "start": 0, "end": 2, "max_length": 16, **update}
    return node0_pb2.OpenSessionRequest(**fields)


@contextmanager
def session(daemon, max_length: int = 16):
    session_id = daemon.stub.OpenSession(open_request(daemon, max_length=max_length)).session_id
    try:
        yield session_id
    finally:
        daemon.stub.CloseSession(node0_pb2.CloseSessionRequest(session_id=session_id))


def step(daemon, session_id: str, position: int, tensor: node0_pb2.Tensor):
    request = node0_pb2.StepRequest(session_id=session_id, position=position, input=tensor)
    return daemon.stub.Step(iter([request]), timeout=10)


TOKENS = encode(torch.tensor([[5, 6, 7]]))


# -- inference sessions ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "update, reason",
    [
        ({"model": "another-model"}, Reason.WRONG_MODEL),
        ({"start": 0, "end": 3}, Reason.SPAN_NOT_HOSTED),
        ({"max_length": 100_000}, Reason.PROMPT_TOO_LONG),
        ({"max_length": 0}, Reason.INVALID_REQUEST),
        ({"adapters": ["no-such-adapter"]}, Reason.UNKNOWN_ADAPTER),
    ],
)
def test_open_session_refusals(daemon, update, reason):
    assert refused(daemon.stub.OpenSession, open_request(daemon, **update)) is reason


def test_a_full_daemon_refuses_sessions_for_capacity_with_a_retry_hint(daemon):
    with session(daemon), session(daemon):  # the fixture's daemon holds two
        assert refused(daemon.stub.OpenSession, open_request(daemon)) is Reason.SESSION_CAPACITY
        with pytest.raises(grpc.RpcError) as info:
            daemon.stub.OpenSession(open_request(daemon))
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert 1.0 <= retry_after_of(info.value) <= 60.0  # the idle timeout of the fixture
    with session(daemon):  # and serves again once they closed
        pass


def test_step_refusals(daemon):
    assert refused(step, daemon, "no-such-session", 0, TOKENS) is Reason.SESSION_NOT_FOUND
    with session(daemon) as sid:
        assert refused(step, daemon, sid, 5, TOKENS) is Reason.POSITION_AHEAD
    with session(daemon) as sid:
        malformed = node0_pb2.Tensor(dtype="int64", shape=[1, 3], data=b"\0")
        assert refused(step, daemon, sid, 0, malformed) is Reason.INVALID_REQUEST
    with session(daemon, max_length=2) as sid:
        assert refused(step, daemon, sid, 0, TOKENS) is Reason.PAST_MAX_LENGTH


def test_an_unexpected_failure_is_internal_and_the_daemon_keeps_serving(daemon, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    with session(daemon) as sid:
        for stage in daemon.executor.stages.values():  # a forward that fails in the scheduler
            monkeypatch.setattr(stage, "forward_batch", broken)
        assert refused(step, daemon, sid, 0, TOKENS) is Reason.INTERNAL
        monkeypatch.undo()
    with session(daemon) as sid:
        assert [r.cache_length for r in step(daemon, sid, 0, TOKENS)] == [3]


# -- training jobs --------------------------------------------------------------------------


def trainer(daemon, job_id: str, trainer_id: str = "t1", span=(0, 2)) -> StageTrainClient:
    return StageTrainClient(
        daemon.endpoint, job_id=job_id, start=span[0], end=span[1], trainer_id=trainer_id
    )


def open_job(client: StageTrainClient, daemon, **update):
    kwargs = {"trainable": "adapter:refusals", "model": daemon.model, "lora": LORA, **update}
    return client.open_job(**kwargs)


def test_open_training_job_refusals(daemon):
    client = trainer(daemon, "open-refusals")
    try:
        assert refused(open_job, client, daemon, model="another") is Reason.WRONG_MODEL
        assert refused(open_job, client, daemon, trainable="bogus") is Reason.BAD_JOB_SETTINGS
        assert refused(open_job, client, daemon, trainable="adapter:Not A Slug") is (
            Reason.BAD_JOB_SETTINGS
        )
        assert refused(open_job, client, daemon, lora=None, trainable="adapter:absent") is (
            Reason.BAD_JOB_SETTINGS
        )
        assert refused(open_job, client, daemon, replicas=2) is Reason.NO_AVERAGING
        elsewhere = trainer(daemon, "open-refusals", span=(0, 3))
        assert refused(open_job, elsewhere, daemon) is Reason.SPAN_NOT_HOSTED
        elsewhere.close()
        request = node0_pb2.TrainingJobRequest(
            job_id="raw", start=0, end=2, trainable="adapter:refusals", optimizer_json="{lr: 1"
        )
        assert refused(daemon.stub.OpenTrainingJob, request) is Reason.BAD_JOB_SETTINGS
    finally:
        client.close()


def test_an_adapter_with_other_lora_settings_is_a_conflict(daemon):
    first, second = trainer(daemon, "conflict-a"), trainer(daemon, "conflict-b")
    try:
        open_job(first, daemon, trainable="adapter:conflict")
        other = LoraSettings(rank=8, alpha=8)
        assert refused(open_job, second, daemon, trainable="adapter:conflict", lora=other) is (
            Reason.ADAPTER_CONFLICT
        )
    finally:
        first.close()
        second.close()


def test_a_leased_job_refuses_another_trainer_and_other_settings(daemon):
    holder, other = trainer(daemon, "leased", "holder"), trainer(daemon, "leased", "other")
    try:
        open_job(holder, daemon)
        assert refused(open_job, other, daemon) is Reason.LEASE_BUSY
        assert refused(other.optimizer_step, 0) is Reason.LEASE_BUSY
        changed = OptimizerSettings(learning_rate=2e-3)
        assert refused(open_job, holder, daemon, optimizer=changed) is (
            Reason.JOB_SETTINGS_CONFLICT
        )
    finally:
        holder.close()
        other.close()


def test_training_call_refusals(daemon):
    client = trainer(daemon, "calls")
    tokens = torch.tensor([[5, 6, 7, 8]])
    batch = {"input": tokens, "attention_mask": torch.ones_like(tokens)}
    try:
        missing = trainer(daemon, "never-opened")
        assert refused(missing.forward, "mb", batch) is Reason.JOB_NOT_FOUND
        assert refused(missing.optimizer_step, 0) is Reason.JOB_NOT_FOUND
        missing.close()
        open_job(client, daemon)
        assert refused(client.optimizer_step, 0) is Reason.NOTHING_TO_STEP
        assert refused(client.backward, "never-forwarded", None) is Reason.MICROBATCH_NOT_FOUND
        assert refused(client.forward, "mb", {"input": tokens.float()}) is Reason.INVALID_REQUEST
        job = daemon.executor.jobs[("calls", 0, 2)]
        job.max_pending = 0
        assert refused(client.forward, "mb", batch) is Reason.TOO_MANY_PENDING
    finally:
        client.close()


class _MismatchedReplicas:
    """Stands in for the averager of a job whose replicas use another adapter configuration."""

    def note_activity(self):
        pass

    def note_idle(self):
        pass

    def set_step(self, step):
        pass

    def average(self, samples):
        raise AveragingConfigError("replicas under this key use another adapter configuration")


def test_replicas_with_another_adapter_configuration_refuse_the_step(daemon):
    client = trainer(daemon, "mismatch", span=(5, 6))
    try:
        open_job(client, daemon)
        daemon.executor.jobs[("mismatch", 5, 6)].averager = _MismatchedReplicas()
        hidden = torch.zeros(1, 4, daemon.executor.config.hidden_size)
        labels = torch.tensor([[1, 2, 3, 4]])
        client.forward("mb", {"input": hidden, "labels": labels})
        client.backward("mb", None)
        assert refused(client.optimizer_step, 0) is Reason.REPLICA_CONFIG_MISMATCH
    finally:
        client.close()


def test_a_bfloat16_stage_takes_bfloat16_and_refuses_lossy_conversions(tiny_models):
    with stage_server(tiny_models[False], dtype=torch.bfloat16) as (executor, _, endpoint):
        channel = grpc.insecure_channel(endpoint)
        try:
            stub = node0_pb2_grpc.StageStub(channel)
            info = stub.Info(node0_pb2.InfoRequest())
            assert {(s.dtype, s.device, tuple(s.accepts)) for s in info.stages} == {
                ("bfloat16", "cpu", ("bfloat16",))
            }
            bf16 = SimpleNamespace(stub=stub, model=str(tiny_models[False]))
            hidden = executor.config.hidden_size
            request = open_request(bf16, start=2, end=5)
            sid = stub.OpenSession(request).session_id
            for dtype in (torch.float16, torch.float32):
                sent = encode(torch.randn(1, 3, hidden).to(dtype))
                assert refused(step, bf16, sid, 0, sent) is Reason.DTYPE_MISMATCH
            good = encode(torch.randn(1, 3, hidden).to(torch.bfloat16))
            (answer,) = list(step(bf16, sid, 0, good))
            assert answer.cache_length == 3
        finally:
            channel.close()
