"""The gatherer's side of ``StageWeights.PullWeights``: receive one stage, check every byte.

:class:`StagePull` runs one call against one replica. The header declares every tensor (name,
dtype, shape, sha256); each chunk must belong to a declared tensor, repeat its dtype and shape
and continue exactly where the previous chunk ended. Every tensor is hashed as its chunks arrive
(sha256 of the raw bytes in order — what :func:`~checkpoint_gather.sources.tensor_sha256` computes
— fed chunk by chunk; hashlib releases the GIL, so the stages' streams hash in parallel) and
compared with the stage's digest the moment its last byte is in. Bytes are written straight into
the preallocated tensor, so a stage costs its own size in memory, not a multiple.

A base pull asks for ``tied_head_digest_only``: a tied model's last stage then declares its LM
head (a copy of the embedding) with its digest only; the entry is kept in the stage's manifest
for the coverage proof (digest equal to the embedding's) and no tensor is received for it.

Failures are sorted by who can fix them:

* :class:`~base.errors.PeerFailureError` — the peer died, hung, or ended the stream early:
  another replica of the same stage may succeed;
* :class:`~base.errors.CheckpointError` — the data is wrong (a digest mismatch, a chunk that
  contradicts the header): never retried silently;
* a refusal — the stage refused the request: the error of its
  :class:`~base.refusals.Reason`'s family, raised from the call's error so that
  :func:`~base.refusals.reason_of` reads the reason back (``unknown_adapter`` and
  ``span_not_hosted`` say another replica may have it; ``wrong_model`` does not).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import grpc.experimental
import numpy as np
import torch

from base.errors import CheckpointError, PeerFailureError
from base.refusals import call_failure
from checkpoint_gather.sources import SourceManifest, TensorEntry
from lora.config import LoraSettings
from models import LM_HEAD
from proto import node0_weights_pb2, node0_weights_pb2_grpc
from proto.tensor_codec import DTYPES, MAX_DIMS
from security.active import call_signer
from security.credentials import Role
from security.grpc_auth import secure_channel

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class PullTarget:
    """One replica of one stage: where to pull layers ``[start, end)`` from."""

    endpoint: str
    peer_id: str
    start: int
    end: int

    @property
    def source_id(self) -> str:
        return f"{self.peer_id}:{self.start}-{self.end}"


@dataclass
class PulledStage:
    """Everything one stage sent, verified: base weights, adapters, the stage's config."""

    target: PullTarget
    config: dict
    base: SourceManifest | None  # the stage's declaration of its base weights
    base_tensors: dict[str, torch.Tensor]
    adapters: dict[str, dict[str, torch.Tensor]]  # adapter -> PEFT key -> tensor
    adapter_settings: dict[str, LoraSettings]  # every adapter the stage holds
    adapter_digests: dict[str, dict[str, str]]  # adapter -> PEFT key -> declared sha256
    bytes: int
    seconds: float
    node0_version: str = ""
    extra: dict = field(default_factory=dict)
    digest_only: tuple[str, ...] = ()  # base tensors declared (manifest) but not sent


class _Receiving:
    """One declared tensor being filled from its chunks."""

    def __init__(self, entry):
        dtype = DTYPES.get(entry.dtype)
        shape = tuple(int(d) for d in entry.shape)
        if dtype is None or not 1 <= len(shape) <= MAX_DIMS or any(d <= 0 for d in shape):
            raise CheckpointError(
                f"{entry.name}: declared with unusable dtype/shape {entry.dtype} {list(shape)}"
            )
        self.entry = entry
        self.shape = shape
        self.filled = 0
        if entry.digest_only:  # declared only: nothing to receive
            self.tensor = self.bytes = self.hasher = None
            self.size = 0
            return
        self.tensor = torch.empty(shape, dtype=dtype)
        self.size = math.prod(shape) * self.tensor.element_size()
        self.bytes = self.tensor.view(-1).view(torch.uint8).numpy()  # aliases the tensor
        self.hasher = hashlib.sha256()


class StagePull:
    """One ``PullWeights`` call to one replica; :meth:`run` returns the verified stage.

    ``on_header(pull, header)`` is called once the manifest arrived, ``on_bytes(pull, n)`` after
    every chunk. :meth:`cancel` (from any thread) ends the call; ``run`` then raises
    :class:`PeerFailureError` with the reason given.
    """

    def __init__(
        self,
        target: PullTarget,
        model: str,
        *,
        base: bool = True,
        adapters: tuple[str, ...] = (),
        chunk_bytes: int = 0,
        on_header: Callable | None = None,
        on_bytes: Callable | None = None,
    ):
        self.target = target
        self.model = model
        self.base = base
        self.adapters = tuple(adapters)
        self.chunk_bytes = chunk_bytes
        self.on_header = on_header
        self.on_bytes = on_bytes
        self.received = 0
        self.total = 0
        self.last_activity = time.monotonic()
        self._call = None
        self._cancel_reason: str | None = None
        self._lock = threading.Lock()

    def cancel(self, reason: str) -> None:
        with self._lock:
            self._cancel_reason = reason
            call = self._call
        if call is not None:
            call.cancel()

    def _where(self) -> str:
        t = self.target
        return f"peer {t.peer_id} ({t.endpoint}), layers [{t.start}, {t.end})"

    def run(self) -> PulledStage:
        started = time.monotonic()
        request = node0_weights_pb2.PullWeightsRequest(
            model=self.model,
            start=self.target.start,
            end=self.target.end,
            base=self.base,
            adapters=list(self.adapters),
            chunk_bytes=self.chunk_bytes,
            tied_head_digest_only=self.base,
        )
        channel = grpc.insecure_channel(
            self.target.endpoint,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                # the stream is read on this thread, not relayed by a channel spin thread: one
                # thread hop less per chunk (``cancel`` from another thread still ends the call)
                (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
            ],
        )
        try:
            stub = node0_weights_pb2_grpc.StageWeightsStub(
                secure_channel(channel, call_signer(Role.GATHERER))
            )
            with self._lock:
                if self._cancel_reason is not None:
                    raise PeerFailureError(f"{self._where()}: {self._cancel_reason}")
                self._call = stub.PullWeights(request, wait_for_ready=False)
            try:
                return self._receive(self._call, started)
            except grpc.RpcError as exc:
                raise self._translate(exc) from exc
        finally:
            channel.close()

    def _translate(self, exc: grpc.RpcError) -> Exception:
        got = f"after {self.received} of {self.total or '?'} bytes"
        if self._cancel_reason is not None:
            return PeerFailureError(f"{self._where()}: {self._cancel_reason} ({got})")
        failure = call_failure(exc)
        if failure.family is PeerFailureError:
            return PeerFailureError(f"{self._where()} failed mid-transfer {got}: {failure}")
        return failure.family(f"{self._where()} refused the pull ({failure})")

    def _check_header(self, header) -> dict[str, _Receiving]:
        t = self.target
        if (header.model, header.start, header.end) != (self.model, t.start, t.end):
            raise CheckpointError(
                f"{self._where()} answered for {header.model!r} layers "
                f"[{header.start}, {header.end})"
            )
        receiving: dict[str, _Receiving] = {}
        for entry in header.tensors:
            if entry.name in receiving:
                raise CheckpointError(f"{self._where()} declares {entry.name} twice")
            if (entry.adapter not in self.adapters) if entry.adapter else not self.base:
                raise CheckpointError(
                    f"{self._where()} declares {entry.name}, which was not asked for"
                )
            if entry.digest_only and (entry.adapter or entry.key != LM_HEAD):
                raise CheckpointError(
                    f"{self._where()} declares {entry.name} without sending "
                    "it; only a tied LM head may be declared by its digest"
                )
            receiving[entry.name] = _Receiving(entry)
        total = sum(r.size for r in receiving.values())
        if total != header.total_bytes:
            raise CheckpointError(
                f"{self._where()}: header says {header.total_bytes} bytes, its tensors hold {total}"
            )
        if not receiving:
            raise CheckpointError(f"{self._where()} declares no tensors")
        return receiving

    def _receive(self, call, started: float) -> PulledStage:
        header = None
        receiving: dict[str, _Receiving] = {}
        order: list[str] = []
        current = 0  # index in ``order`` of the tensor being received
        trailer = None
        for message in call:
            self.last_activity = time.monotonic()
            kind = message.WhichOneof("kind")
            if kind == "header":
                if header is not None:
                    raise CheckpointError(f"{self._where()} sent a second header")
                header = message.header
                receiving = self._check_header(header)
                order = [name for name, part in receiving.items() if not part.entry.digest_only]
                self.total = header.total_bytes
                if self.on_header is not None:
                    self.on_header(self, header)
            elif kind == "chunk":
                if header is None or trailer is not None:
                    raise CheckpointError(f"{self._where()} sent a chunk outside the stream body")
                current = self._add_chunk(message.chunk, receiving, order, current)
            elif kind == "trailer":
                trailer = message.trailer
            else:
                raise CheckpointError(f"{self._where()} sent an empty message")
        if header is None or trailer is None or current < len(order):
            done = sum(receiving[name].filled == receiving[name].size for name in order)
            raise PeerFailureError(
                f"{self._where()}: the stream ended early ({done} of "
                f"{len(order)} tensors, {self.received} of "
                f"{self.total} bytes)"
            )
        if (trailer.tensors, trailer.bytes) != (len(order), self.received):
            raise CheckpointError(
                f"{self._where()}: trailer counts {trailer.tensors} tensors, "
                f"{trailer.bytes} bytes; received {len(order)}, "
                f"{self.received}"
            )
        return self._assemble(header, receiving, started)

    def _add_chunk(
        self, chunk, receiving: dict[str, _Receiving], order: list[str], current: int
    ) -> int:
        part = receiving.get(chunk.name)
        if part is None:
            raise CheckpointError(f"{self._where()} sent undeclared tensor {chunk.name!r}")
        if current >= len(order) or chunk.name != order[current]:
            expected = order[current] if current < len(order) else "nothing"
            raise CheckpointError(
                f"{self._where()} sent {chunk.name} out of order (expected {expected})"
            )
        if chunk.dtype != part.entry.dtype or tuple(chunk.shape) != part.shape:
            raise CheckpointError(
                f"{chunk.name}: chunk says {chunk.dtype} {list(chunk.shape)}, "
                f"declared {part.entry.dtype} {list(part.shape)}"
            )
        if chunk.offset != part.filled:
            raise CheckpointError(
                f"{chunk.name}: chunk at byte {chunk.offset}, expected "
                f"{part.filled} (chunks out of order or missing)"
            )
        data = chunk.data  # each access to the field makes a new bytes object: once
        n = len(data)
        if n == 0 or part.filled + n > part.size:
            raise CheckpointError(
                f"{chunk.name}: chunk of {n} bytes at {part.filled} does not "
                f"fit the tensor's {part.size} bytes"
            )
        part.bytes[part.filled : part.filled + n] = np.frombuffer(data, dtype=np.uint8)
        part.hasher.update(data)
        part.filled += n
        self.received += n
        if self.on_bytes is not None:
            self.on_bytes(self, n)
        if part.filled < part.size:
            return current
        if part.hasher.hexdigest() != part.entry.sha256:
            raise CheckpointError(
                f"{self._where()}: tensor {part.entry.key}"
                + (f" of adapter {part.entry.adapter}" if part.entry.adapter else "")
                + " arrived corrupt (sha256 of the received bytes differs from the stage's)",
                hint="the transfer damaged the data; nothing was written — gather again",
            )
        return current + 1

    def _assemble(self, header, receiving: dict[str, _Receiving], started: float) -> PulledStage:
        t = self.target
        base_entries, base_tensors = {}, {}
        adapters: dict[str, dict[str, torch.Tensor]] = {name: {} for name in self.adapters}
        digests: dict[str, dict[str, str]] = {name: {} for name in self.adapters}
        for part in receiving.values():
            entry = part.entry
            if entry.adapter:
                adapters[entry.adapter][entry.key] = part.tensor
                digests[entry.adapter][entry.key] = entry.sha256
            else:
                base_entries[entry.key] = TensorEntry(part.shape, entry.dtype, entry.sha256)
                if not entry.digest_only:
                    base_tensors[entry.key] = part.tensor
        missing = [name for name, state in adapters.items() if not state]
        if missing:
            raise CheckpointError(f"{self._where()} sent no tensors of adapter(s) {missing}")
        try:
            settings = {
                info.name: LoraSettings.model_validate_json(info.settings_json)
                for info in header.adapters
            }
            config = json.loads(header.config_json)
        except ValueError as exc:
            raise CheckpointError(f"{self._where()}: unreadable header: {exc}") from exc
        seconds = time.monotonic() - started
        base = None
        digest_only = tuple(p.entry.key for p in receiving.values() if p.entry.digest_only)
        if self.base:
            base = SourceManifest(
                t.source_id,
                t.start,
                t.end,
                base_entries,
                peer=t.peer_id,
                extra={
                    "endpoint": t.endpoint,
                    "bytes": self.received,
                    "seconds": round(seconds, 3),
                    **({"digest_only": list(digest_only)} if digest_only else {}),
                },
            )
        return PulledStage(
            target=t,
            config=config,
            base=base,
            base_tensors=base_tensors,
            adapters=adapters,
            adapter_settings=settings,
            adapter_digests=digests,
            bytes=self.received,
            seconds=seconds,
            node0_version=header.node0_version,
            digest_only=digest_only,
        )
