"""The stage side of ``node0 gather``: the ``StageWeights.PullWeights`` stream.

A request names one hosted stage, whether to send its base weights, and which adapters. The
stage snapshots those tensors during a turn of the executor's compute gate, holding the stage's
adapter lock — every forward, backward and optimizer step takes a turn, so the snapshot never
sees half an optimizer step — then releases the locks, computes each tensor's sha256
(:func:`checkpoint_gather.sources.tensor_sha256`) and streams

    header (manifest: name, dtype, shape, sha256 per tensor; config; adapters held)
    → ordered ``TensorChunk``s of every tensor, in header order → trailer.

Digests of the live tensors are remembered (:class:`checkpoint_gather.digest_cache.DigestCache`,
keyed by each tensor's state as copied under the lock, so an optimizer step or any other
in-place change invalidates them): frozen base weights are hashed once per daemon, not once per
pull. With ``tied_head_digest_only`` a tied model's last stage declares its LM head (a copy of
the embedding) with its digest and sends no bytes of it.

Snapshotting costs one copy of the sent tensors (in host memory, also for a CUDA stage) for the
length of the stream; serving inference is blocked only while they are copied. Tensors go in the
dtype the stage holds them in (a bfloat16 stage's exact bytes). Base weights go under their
Hugging Face names (a LoRA-wrapped linear's ``base_layer`` is folded back into its plain name),
adapter tensors under PEFT's saved-adapter keys with global layer indices
(:func:`lora.adapter_state_dict`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import grpc
import torch

from checkpoint_gather.digest_cache import DigestCache, TensorState
from checkpoint_gather.sources import dtype_name, tensor_sha256
from lora.stage_adapters import adapter_lock, adapter_state_dict
from lora.stage_adapters import adapters as stage_adapters
from models import LM_HEAD, expected_shapes
from pipeline_stages.errors import (
    InvalidInput,
    SpanNotHosted,
    UnknownAdapter,
    WrongModel,
    abort_call,
)
from pipeline_stages.executor import StageExecutor
from proto import node0_pb2, node0_weights_pb2, node0_weights_pb2_grpc
from proto.tensor_chunks import DEFAULT_CHUNK_BYTES
from proto.tensor_codec import DTYPES

log = logging.getLogger(__name__)

MIN_CHUNK_BYTES = 4096
MESSAGE_OVERHEAD = 64 * 1024  # room for a chunk's name, dtype and shape in one message
FAULTS_ENV = "NODE0_TEST_WEIGHTS_FAULTS"


@dataclass
class SnapshotTensor:
    """One tensor of a snapshot: its stream name, adapter ("" = base), key, and either a copy
    of its bytes (``tensor``) or only its digest (``digest_only``: declared, not sent).

    ``source`` and ``state`` are the live tensor and its state when it was copied: the key under
    which the copy's digest is remembered."""

    name: str
    adapter: str
    key: str
    tensor: torch.Tensor | None
    dtype: torch.dtype
    shape: tuple[int, ...]
    sha256: str | None = None
    digest_only: bool = False
    source: torch.Tensor | None = None
    state: TensorState | None = None

    @property
    def nbytes(self) -> int:
        return 0 if self.digest_only else self.tensor.numel() * self.tensor.element_size()


def tensor_chunks(
    name: str, tensor: torch.Tensor, chunk_bytes: int
) -> Iterator[node0_pb2.TensorChunk]:
    """``tensor`` (contiguous) as ordered ``TensorChunk``s sliced straight from its memory.

    Same messages as :func:`proto.tensor_chunks.split_tensor`, which first copies the whole
    tensor into one ``bytes`` — for a 113 MB embedding matrix, a copy per tensor that the
    stage's snapshot does not need.
    """
    dtype = dtype_name(tensor.dtype)
    if dtype not in DTYPES:
        raise TypeError(f"{name}: dtype {dtype} cannot be sent")
    data = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
    shape = list(tensor.shape)
    for offset in range(0, len(data), chunk_bytes):
        yield node0_pb2.TensorChunk(
            name=name,
            dtype=dtype,
            shape=shape,
            offset=offset,
            data=data[offset : offset + chunk_bytes].tobytes(),
        )


def wire_name(adapter: str, key: str) -> str:
    """The name a tensor's chunks carry: the key for a base weight, ``<adapter>/<key>`` else."""
    return f"{adapter}/{key}" if adapter else key


def stage_base_tensors(stage) -> dict[str, torch.Tensor]:
    """The stage's base weights by Hugging Face name, in the order the architecture lists them.

    PEFT wraps an adapted linear layer as ``…q_proj.base_layer`` plus ``lora_*`` modules; the
    base weight is reported under its plain name and the adapter tensors are left out.
    """
    wanted = expected_shapes(
        stage.full_config, range(stage.start, stage.end), first=stage.is_first, last=stage.is_last
    )
    held: dict[str, torch.Tensor] = {}
    for name, param in stage.named_parameters(remove_duplicate=False):
        parts = name.split(".")
        if any(part.startswith("lora_") for part in parts):
            continue
        held[".".join(part for part in parts if part != "base_layer")] = param
    missing = [name for name in wanted if name not in held]
    if missing:
        raise RuntimeError(f"stage [{stage.start}, {stage.end}) lacks {missing[:3]}")
    return {name: held[name] for name in wanted}


def snapshot_stage(
    executor: StageExecutor,
    stage,
    *,
    base: bool,
    adapters: list[str],
    digests: DigestCache | None = None,
    tied_head_digest_only: bool = False,
) -> list[SnapshotTensor]:
    """Copy the requested tensors of ``stage`` as one consistent snapshot.

    Holds the executor's compute lock (every inference/training step holds it) and the stage's
    adapter lock while copying, so no optimizer step or adapter attach is seen half done. A base
    tensor whose digest ``digests`` holds for its current state gets it right away; with
    ``tied_head_digest_only`` a tied LM head on the last stage is only declared (no copy is
    kept for sending; it is copied only if its digest is not known yet).
    """
    tied_head = (
        tied_head_digest_only
        and stage.is_last
        and bool(getattr(stage.full_config, "tie_word_embeddings", False))
    )
    with executor.gate.training(), adapter_lock(stage):  # a turn of the compute gate
        held = stage_adapters(stage)
        unknown = [name for name in adapters if name not in held]
        if unknown:
            raise UnknownAdapter(
                f"unknown adapter(s) {unknown} on layers [{stage.start}, "
                f"{stage.end}); held: {', '.join(sorted(held)) or 'none'}"
            )
        out = []
        if base:
            for key, param in stage_base_tensors(stage).items():  # the live parameters
                state = TensorState.of(param)
                sha = digests.lookup(param, state) if digests is not None else None
                digest_only = tied_head and key == LM_HEAD
                copy = (  # in host memory: a CUDA stage's tensors are streamed from there
                    None
                    if digest_only and sha
                    else param.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)
                )
                out.append(
                    SnapshotTensor(
                        key,
                        "",
                        key,
                        copy,
                        param.dtype,
                        tuple(param.shape),
                        sha256=sha,
                        digest_only=digest_only,
                        source=param,
                        state=state,
                    )
                )
        for adapter in adapters:
            out += [
                SnapshotTensor(
                    wire_name(adapter, key), adapter, key, t.to("cpu"), t.dtype, tuple(t.shape)
                )
                for key, t in sorted(adapter_state_dict(stage, adapter).items())
            ]
    return out


def hash_snapshot(snapshot: list[SnapshotTensor], digests: DigestCache | None = None) -> None:
    """Fill in every missing digest from the copied bytes (outside the locks), remember those
    of live base tensors in ``digests``, and drop the copies of digest-only tensors."""
    for item in snapshot:
        if item.sha256 is None:
            item.sha256 = tensor_sha256(item.tensor)
            if digests is not None and item.source is not None:
                digests.store(item.source, item.state, item.sha256)
        if item.digest_only:
            item.tensor = None
        item.source = None  # the snapshot must not keep live tensors alive


class _TestFaults:
    """Test-only fault injection, off unless ``$NODE0_TEST_WEIGHTS_FAULTS`` names a directory.

    While ``<dir>/corrupt`` exists, the first chunk of every pull has one byte flipped (after the
    digests were computed). While ``<dir>/delay`` exists, every chunk waits the number of seconds
    it holds. Files, not variables, so a test can switch a fault off in a running daemon.
    """

    def __init__(self, directory: str | None):
        self.directory = Path(directory) if directory else None

    def corrupt(self) -> bool:
        return self.directory is not None and (self.directory / "corrupt").exists()

    def delay(self) -> float:
        if self.directory is None:
            return 0.0
        try:
            return float((self.directory / "delay").read_text().strip() or 0)
        except (OSError, ValueError):
            return 0.0


class WeightsService(node0_weights_pb2_grpc.StageWeightsServicer):
    """Serves ``PullWeights`` for the stages of one executor."""

    def __init__(self, executor: StageExecutor, *, peer_id: str, max_message_bytes: int):
        self.executor = executor
        self.peer_id = peer_id
        self.max_message_bytes = max_message_bytes
        self._faults = _TestFaults(os.environ.get(FAULTS_ENV))
        self.digests = DigestCache()

    def add_to_server(self, server: grpc.Server) -> None:
        node0_weights_pb2_grpc.add_StageWeightsServicer_to_server(self, server)

    def _chunk_bytes(self, requested: int) -> int:
        ceiling = max(MIN_CHUNK_BYTES, self.max_message_bytes - MESSAGE_OVERHEAD)
        return min(max(requested or DEFAULT_CHUNK_BYTES, MIN_CHUNK_BYTES), ceiling)

    def _stage(self, request):
        if request.model != self.executor.model_name:
            raise WrongModel(
                f"this daemon serves {self.executor.model_name!r}, not {request.model!r}"
            )
        stage = self.executor.stages.get((request.start, request.end))
        if stage is None:
            hosted = ", ".join(f"[{s}, {e})" for s, e in sorted(self.executor.stages))
            raise SpanNotHosted(
                f"layers [{request.start}, {request.end}) are not hosted here (hosted: {hosted})"
            )
        if not request.base and not request.adapters:
            raise InvalidInput("nothing to send: ask for the base weights and/or adapters")
        if len(set(request.adapters)) != len(request.adapters):
            raise InvalidInput(f"adapter list {list(request.adapters)} names one twice")
        return stage

    def _header(self, request, stage, snapshot: list[SnapshotTensor]):
        config = self.executor.config
        entries = [
            node0_weights_pb2.WeightEntry(
                name=item.name,
                adapter=item.adapter,
                key=item.key,
                dtype=dtype_name(item.dtype),
                shape=list(item.shape),
                sha256=item.sha256,
                digest_only=item.digest_only,
            )
            for item in snapshot
        ]
        held = stage_adapters(stage)
        return node0_weights_pb2.WeightsHeader(
            model=self.executor.model_name,
            start=request.start,
            end=request.end,
            num_layers=config.num_hidden_layers,
            peer_id=self.peer_id,
            node0_version=metadata.version("node0"),
            config_json=json.dumps(config.to_dict(), sort_keys=True, default=str),
            tensors=entries,
            adapters=[
                node0_weights_pb2.AdapterInfo(name=name, settings_json=held[name].model_dump_json())
                for name in sorted(held)
            ],
            total_bytes=sum(item.nbytes for item in snapshot),
        )

    def PullWeights(self, request, context):  # noqa: N802 (gRPC method name)
        started = time.monotonic()
        try:
            stage = self._stage(request)
            snapshot = snapshot_stage(
                self.executor,
                stage,
                base=request.base,
                adapters=list(request.adapters),
                digests=self.digests,
                tied_head_digest_only=request.tied_head_digest_only,
            )
            hash_snapshot(snapshot, self.digests)
            header = self._header(request, stage, snapshot)
        except Exception as exc:
            abort_call(context, exc, "PullWeights")
        chunk_bytes = self._chunk_bytes(request.chunk_bytes)
        log.info(
            "PullWeights: layers [%d, %d), base %s, adapters %s: %d tensors, %d bytes to %s",
            request.start,
            request.end,
            request.base,
            list(request.adapters),
            len(snapshot),
            header.total_bytes,
            context.peer(),
        )
        yield node0_weights_pb2.WeightsMessage(header=header)
        corrupt, delay = self._faults.corrupt(), self._faults.delay()
        sent = 0
        sending = [item for item in snapshot if not item.digest_only]
        for item in sending:
            for chunk in tensor_chunks(item.name, item.tensor, chunk_bytes):
                if corrupt:
                    chunk.data = bytes([chunk.data[0] ^ 0xFF]) + chunk.data[1:]
                    corrupt = False
                if delay:
                    time.sleep(delay)
                sent += len(chunk.data)
                yield node0_weights_pb2.WeightsMessage(chunk=chunk)
        yield node0_weights_pb2.WeightsMessage(
            trailer=node0_weights_pb2.WeightsTrailer(tensors=len(sending), bytes=sent)
        )
        log.info(
            "PullWeights: layers [%d, %d) sent in %.1f s",
            request.start,
            request.end,
            time.monotonic() - started,
        )
