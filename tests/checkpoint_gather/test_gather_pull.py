"""PullWeights in one process: stages served over real gRPC on loopback, pulled, checked and
exported; the client against a scripted servicer for every protocol violation; the merge math
against PEFT's ``merge_and_unload``."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent import futures
from contextlib import contextmanager

import grpc
import pytest
import torch

from base.errors import CheckpointError, ExitCode, PeerFailureError, RequestError
from checkpoint_gather.gather import GatherOptions, StagePlan, gather_stages
from checkpoint_gather.merge import merge_adapters
from checkpoint_gather.sources import read_local_stage, tensor_sha256
from checkpoint_gather.weights_client import PullTarget, StagePull
from checkpoint_gather.weights_service import FAULTS_ENV, WeightsService
from lora import LoraSettings
from proto import node0_pb2, node0_weights_pb2, node0_weights_pb2_grpc
from provenance import create_run_dir
from tests.fixtures import NUM_LAYERS, STAGES, load_causal_lm, logits, stage_server


def plans_for(endpoint, spans=STAGES, peer_id="peer-a", fallback=None):
    return [
        StagePlan(
            s,
            e,
            (PullTarget(endpoint, peer_id, s, e),)
            + ((PullTarget(fallback, "peer-b", s, e),) if fallback else ()),
        )
        for s, e in spans
    ]


def options(model_dir, out, **kw):
    return GatherOptions(model=str(model_dir), out_dir=out, gguf_types=(), **kw)


def leftovers(out):
    return sorted(p.name for p in out.parent.glob(f".{out.name}*"))


@pytest.mark.parametrize("tied", [False, True])
def test_pulled_stages_export_the_checkpoint_exactly(tiny_models, tmp_path, tied):
    model_dir = tiny_models[tied]
    out = tmp_path / "out"
    with stage_server(model_dir) as (_, _, endpoint):
        result = gather_stages(
            options(model_dir, out), plans_for(endpoint), tokenizer_dir=model_dir
        )
    sent = {}
    for stage, (start, end) in zip(result.stages, STAGES, strict=True):
        manifest, _ = read_local_stage(model_dir, start, end, num_layers=NUM_LAYERS)
        sent.update({n: e.sha256 for n, e in stage.base.tensors.items()})
        assert {n: e.sha256 for n, e in manifest.tensors.items()}.items() <= sent.items()
        assert stage.bytes == sum(t.numel() * 4 for t in stage.base_tensors.values())
    if tied:  # the last stage's LM head is its copy of the embedding, declared by its digest
        assert sent["lm_head.weight"] == sent["model.embed_tokens.weight"]
        assert result.stages[-1].digest_only == ("lm_head.weight",)
    assert torch.equal(
        logits(load_causal_lm(result.export.hf_dir)), logits(load_causal_lm(model_dir))
    )
    manifest = json.loads(result.export.manifest.read_text())
    assert [(s["peer"], s["layers"]) for s in manifest["sources"]] == [
        ("peer-a", [s, e]) for s, e in STAGES
    ]
    assert all(s["extra"]["bytes"] > 0 for s in manifest["sources"])
    assert manifest["coverage"]["dropped"] == (["lm_head.weight"] if tied else [])


def test_corrupted_chunk_fails_closed_and_a_rerun_succeeds(tiny_models, tmp_path, monkeypatch):
    faults = tmp_path / "faults"
    faults.mkdir()
    monkeypatch.setenv(FAULTS_ENV, str(faults))
    model_dir, out = tiny_models[False], tmp_path / "out"
    with stage_server(model_dir) as (_, _, endpoint):
        (faults / "corrupt").touch()
        run = create_run_dir(tmp_path / "runs", "gather")
        with pytest.raises(CheckpointError, match="arrived corrupt") as info:
            gather_stages(
                options(model_dir, out), plans_for(endpoint), tokenizer_dir=model_dir, run=run
            )
        assert info.value.exit_code == ExitCode.CHECKPOINT
        assert not out.exists() and leftovers(out) == []
        record = json.loads((run.path / "run_record.json").read_text())
        assert record["status"] == "failed" and "arrived corrupt" in record["error"]
        (faults / "corrupt").unlink()  # the fix
        result = gather_stages(
            options(model_dir, out), plans_for(endpoint), tokenizer_dir=model_dir
        )
    assert result.export.hf_dir.is_dir()


def test_snapshot_waits_for_the_compute_gate(tiny_models):
    """While a step holds the compute gate the stage sends nothing; the snapshot taken after
    it carries the step's result."""
    model_dir = tiny_models[False]
    with stage_server(model_dir, spans=[(0, 2)]) as (executor, _, endpoint):
        pull = StagePull(PullTarget(endpoint, "peer-a", 0, 2), str(model_dir))
        result = {}
        thread = threading.Thread(target=lambda: result.update(stage=pull.run()))
        weight = executor.stages[(0, 2)].model.layers["1"].mlp.up_proj.weight
        with executor.gate.training():  # standing in for an optimizer step
            thread.start()
            time.sleep(0.5)
            assert pull.total == 0  # no header yet: the stage waits for its turn
            with torch.no_grad():
                weight.add_(1.0)  # the step completes before the turn ends
        thread.join(10)
    pulled = result["stage"].base_tensors["model.layers.1.mlp.up_proj.weight"]
    assert torch.equal(pulled, weight.detach())


def test_dead_replica_falls_back_and_without_one_fails_closed(tiny_models, tmp_path):
    """A replica that dies mid-stream is replaced by the next; with none left: exit 7."""
    model_dir = tiny_models[False]
    with stage_server(model_dir) as (_, real, endpoint), dying_proxy(real, after=3) as dying:
        result = gather_stages(
            options(model_dir, tmp_path / "a"),
            plans_for(dying, fallback=endpoint),
            tokenizer_dir=model_dir,
        )
        assert all(s.target.endpoint == endpoint for s in result.stages)
        out = tmp_path / "b"
        with pytest.raises(PeerFailureError, match=r"failed mid-transfer .*peer died") as info:
            gather_stages(options(model_dir, out), plans_for(dying), tokenizer_dir=model_dir)
        assert info.value.exit_code == ExitCode.PEER_FAILURE
        assert "could not be pulled from any of its 1 replica" in str(info.value)
        assert not out.exists() and leftovers(out) == []


def test_missing_layers_fail_before_anything_is_written(tiny_models, tmp_path):
    model_dir, out = tiny_models[False], tmp_path / "out"
    with stage_server(model_dir) as (_, _, endpoint):
        with pytest.raises(CheckpointError, match="layers 2-4 are held by no source"):
            gather_stages(
                options(model_dir, out),
                plans_for(endpoint, [(0, 2), (5, 6)]),
                tokenizer_dir=model_dir,
            )
        with pytest.raises(RequestError, match="unknown adapter"):
            gather_stages(
                options(model_dir, out, merge_adapters=("nope",)),
                plans_for(endpoint),
                tokenizer_dir=model_dir,
            )
    assert not out.exists() and leftovers(out) == []


# -- the client against a scripted servicer -----------------------------------------------


class _Proxy(node0_weights_pb2_grpc.StageWeightsServicer):
    """Relays a real stage's stream and aborts it (UNAVAILABLE) after ``after`` messages."""

    def __init__(self, real: WeightsService, after: int):
        self.real, self.after = real, after

    def PullWeights(self, request, context):  # noqa: N802
        for index, message in enumerate(self.real.PullWeights(request, context)):
            if index == self.after:
                context.abort(grpc.StatusCode.UNAVAILABLE, "peer died")
            yield message


class _Scripted(node0_weights_pb2_grpc.StageWeightsServicer):
    def __init__(self, messages):
        self.messages = messages

    def PullWeights(self, request, context):  # noqa: N802
        yield from self.messages


@contextmanager
def _serve(servicer):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    node0_weights_pb2_grpc.add_StageWeightsServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def dying_proxy(real, after):
    return _serve(_Proxy(real, after))


NORM = torch.arange(8, dtype=torch.float32)
DATA = NORM.numpy().tobytes()


def _header(sha=None, digest_only=False):
    entry = node0_weights_pb2.WeightEntry(
        name="model.norm.weight",
        key="model.norm.weight",
        dtype="float32",
        shape=[8],
        sha256=sha or tensor_sha256(NORM),
        digest_only=digest_only,
    )
    return node0_weights_pb2.WeightsMessage(
        header=node0_weights_pb2.WeightsHeader(
            model="m",
            start=5,
            end=6,
            num_layers=6,
            peer_id="p",
            config_json="{}",
            tensors=[entry],
            total_bytes=32,
        )
    )


def _chunk(data=DATA, offset=0, name="model.norm.weight"):
    return node0_weights_pb2.WeightsMessage(
        chunk=node0_pb2.TensorChunk(name=name, dtype="float32", shape=[8], offset=offset, data=data)
    )


TRAILER = node0_weights_pb2.WeightsMessage(
    trailer=node0_weights_pb2.WeightsTrailer(tensors=1, bytes=32)
)


@pytest.mark.parametrize(
    "script, error, match",
    [
        ([_header(), _chunk(DATA[:16]), _chunk(DATA[16:], 16), TRAILER], None, None),
        (
            [_header(), _chunk(name="model.embed_tokens.weight"), TRAILER],
            CheckpointError,
            "undeclared tensor",
        ),
        ([_header(), _chunk(DATA[16:], 16), TRAILER], CheckpointError, "expected 0"),
        ([_header(), _chunk(DATA + b"1234"), TRAILER], CheckpointError, "does not fit"),
        (
            [_header(), _chunk(bytes([DATA[0] ^ 1]) + DATA[1:]), TRAILER],
            CheckpointError,
            "arrived corrupt",
        ),
        ([_header(), _chunk(DATA[:16])], PeerFailureError, "ended early"),
        ([_header(), _chunk(), _chunk(DATA[:4], 32), TRAILER], CheckpointError, "out of order"),
        ([_chunk(), TRAILER], CheckpointError, "outside the stream body"),
        ([_header(digest_only=True), TRAILER], CheckpointError, "only a tied LM head"),
    ],
)
def test_client_checks_every_message(script, error, match):
    with _serve(_Scripted(script)) as endpoint:
        pull = StagePull(PullTarget(endpoint, "p", 5, 6), "m")
        if error is None:
            stage = pull.run()
            assert torch.equal(stage.base_tensors["model.norm.weight"], NORM)
        else:
            with pytest.raises(error, match=match):
                pull.run()


class _Silent(node0_weights_pb2_grpc.StageWeightsServicer):
    """A peer that accepts the call and never sends anything (hung, not dead)."""

    def PullWeights(self, request, context):  # noqa: N802
        while context.is_active():
            time.sleep(0.05)
        yield from ()


def test_a_silent_peer_counts_as_failed(tiny_models, tmp_path):
    model_dir, out = tiny_models[False], tmp_path / "out"
    with _serve(_Silent()) as endpoint:
        # the idle watchdog (a small configured bound) ended the pull, saying what had arrived
        with pytest.raises(PeerFailureError, match=r"no data for 0.5 s \(after 0 of"):
            gather_stages(
                options(model_dir, out, idle_timeout=0.5),
                plans_for(endpoint, [(0, 6)]),
                tokenizer_dir=model_dir,
            )
    assert not out.exists()


def test_unreachable_peer_is_a_peer_failure():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(PeerFailureError, match="UNAVAILABLE"):
            StagePull(PullTarget(f"127.0.0.1:{port}", "p", 0, 2), "m").run()


# -- merge ------------------------------------------------------------------------------


def test_merge_equals_peft_merge_and_unload(tiny_models):
    from peft import get_peft_model, get_peft_model_state_dict

    settings = {
        "task-x": LoraSettings(rank=4, alpha=8.0, init_seed=1),
        "task-y": LoraSettings(rank=2, alpha=3.0, target_modules=("q_proj", "down_proj")),
    }
    base = load_causal_lm(tiny_models[False])
    plain = {k: v.clone() for k, v in base.state_dict().items()}
    model = get_peft_model(base, settings["task-x"].to_peft(), adapter_name="task-x")
    model.add_adapter("task-y", settings["task-y"].to_peft())
    torch.manual_seed(5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.3)
    states = {n: get_peft_model_state_dict(model, adapter_name=n) for n in settings}
    model.base_model.set_adapter(["task-x", "task-y"])
    expected = model.merge_and_unload().state_dict()
    changed = merge_adapters(plain, [(settings[n], states[n]) for n in ("task-x", "task-y")])
    assert len(changed) == NUM_LAYERS * 7
    for name, tensor in expected.items():
        assert torch.allclose(plain[name], tensor, atol=1e-6, rtol=0), name
