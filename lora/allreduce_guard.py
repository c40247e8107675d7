"""The one place where other peers' gradient parts enter this process: defences on arrival.

hivemind's all-reduce splits the flattened tensors into parts; each peer reduces some parts:
it receives every groupmate's copy of its parts with the sender's declared weight, accumulates
``sum(w * part) / sum(w)`` and sends the result back. :class:`GuardedReplicaAverager` swaps in a
reducer that checks each incoming part before it is accumulated:

- a part with NaN/inf values, or a non-finite weight, drops the sender from the rest of the
  round (hivemind's own "banned sender" path: its remaining parts are averaged without it);
- a part whose L2 norm exceeds ``max_part_norm`` is scaled down to that norm;
- the declared weight is clamped to ``[0, max_peer_weight]``;
- **a part far outside the group's** is excluded: once every sender's copy of a part has
  arrived, a copy whose L2 norm exceeds ``outlier_norm_ratio`` (default 10) times the median
  norm of the copies with a positive weight is left out of that part's mean (the others are
  averaged with their weights). Every exclusion is logged with the sender's peer id and handed
  to the host (:meth:`PartGuard.drain_excluded`), which reports it with the round.

Why a norm bound against the group median, not CenteredClip: it needs no iterations, no
tuning of a clipping radius, and with honest replicas of the same stage (same data distribution,
gradients of similar norm) it leaves their exact weighted mean — the honest replicas end with
the mean of the honest contributions to float32 rounding. Its failure modes: with fewer than
three weighted copies there is no majority, so nothing is excluded (two replicas: the cap of
``max_part_norm`` and the non-finite check are the only defences); a poisoned copy whose norm
is within the ratio (a sign flip, a small bias) passes, CenteredClip would only bound it too;
honest replicas whose norms differ more than the ratio (very unequal data) lose the largest;
and a malicious *reducer* (a member that reduces a part and returns something else) is not
caught: that needs BTARD's commitments and re-computation (shared notes).

Our own parts pass the same reducer (the host zeroes non-finite local gradients and sends them
with weight 0 before the round), so every replica receives the same reduced values.
Counters live in shared memory: the reducer runs in the averager's child process.

Two more things the host (:mod:`lora.averaging`) needs from the averager process: when the
all-reduce of an assembled group fails, :class:`GroupRoundFailed` still tells it who the
groupmates were and what they sent in the all-gather (hivemind drops that), so it can publish
its outcome where they look; and :meth:`GuardedReplicaAverager.download_state_from` downloads
the state of one chosen peer (hivemind's ``load_state_from_peers`` picks the peer itself).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import math
import multiprocessing as mp
import statistics
from collections.abc import Callable, Sequence
from typing import Any, AsyncIterator  # noqa: UP035 (hivemind reads typing's AsyncIterator)

import torch
from hivemind.averaging import DecentralizedAverager
from hivemind.averaging.allreduce import AllReduceRunner, AveragingMode
from hivemind.averaging.group_info import GroupInfo
from hivemind.averaging.matchmaking import MatchmakingException
from hivemind.averaging.partition import (
    AllreduceException,
    BannedException,
    TensorPartReducer,
)
from hivemind.compression import deserialize_torch_tensor
from hivemind.p2p import P2PContext, PeerID
from hivemind.proto import averaging_pb2
from hivemind.utils import MPFuture
from hivemind.utils.asyncio import aiter_with_timeout, as_aiter, azip
from hivemind.utils.streaming import combine_from_streaming
from hivemind.utils.timed_storage import get_dht_time

log = logging.getLogger(__name__)


class PartGuard:
    """Limits applied to every incoming part, and shared counters of what they caught."""

    def __init__(
        self,
        *,
        max_part_norm: float | None,
        max_peer_weight: float,
        outlier_norm_ratio: float | None = 10.0,
    ):
        self.max_part_norm = max_part_norm
        self.max_peer_weight = max_peer_weight
        self.outlier_norm_ratio = outlier_norm_ratio
        self._rejected = mp.Value(ctypes.c_long, 0)
        self._clipped = mp.Value(ctypes.c_long, 0)
        self._excluded = mp.SimpleQueue()  # (peer id, why) from the averager process

    def report(self, peer: str, why: str) -> None:
        """Record (and log) that ``peer``'s contribution was left out of a round."""
        log.warning("averaging: excluded peer %s: %s", peer, why)
        self._excluded.put((peer, why))

    def drain_excluded(self) -> list[tuple[str, str]]:
        """Exclusions reported since the last call (read in the host process)."""
        found = []
        while not self._excluded.empty():
            found.append(tuple(self._excluded.get()))
        return found

    def robust(self, pending: list, part_index: int, peers: Sequence[str]) -> list:
        """The ``(sender, part, weight)`` copies of one part to average: those whose norm is
        within ``outlier_norm_ratio`` times the median of the weighted copies' norms."""
        weighted = [float(torch.linalg.vector_norm(p)) for _, p, w in pending if w > 0]
        if self.outlier_norm_ratio is None or len(weighted) < 3:
            return pending
        bound = self.outlier_norm_ratio * statistics.median(weighted)
        kept = []
        for sender, part, weight in pending:
            norm = float(torch.linalg.vector_norm(part))
            if weight > 0 and norm > bound and norm > 1e-30:
                with self._rejected.get_lock():
                    self._rejected.value += 1
                self.report(
                    peers[sender],
                    f"part {part_index}: norm {norm:.4g} beyond {self.outlier_norm_ratio:g} x "
                    f"the group median {bound / self.outlier_norm_ratio:.4g}",
                )
            else:
                kept.append((sender, part, weight))
        return kept

    @property
    def rejected(self) -> int:
        return int(self._rejected.value)

    @property
    def clipped(self) -> int:
        return int(self._clipped.value)

    def check(self, part: torch.Tensor, weight: float) -> tuple[torch.Tensor, float]:
        """The part and weight to accumulate; raises BannedException to drop the sender."""
        if not math.isfinite(weight) or not bool(torch.isfinite(part).all()):
            with self._rejected.get_lock():
                self._rejected.value += 1
            raise BannedException("non-finite gradient part or weight")
        weight = min(max(float(weight), 0.0), self.max_peer_weight)
        if self.max_part_norm is not None:
            norm = float(torch.linalg.vector_norm(part))
            if norm > self.max_part_norm:
                with self._clipped.get_lock():
                    self._clipped.value += 1
                part = part * (self.max_part_norm / norm)
        return part, weight


class _GuardedReducer(TensorPartReducer):
    """hivemind's reducer with the guard on every part, and a fix for a sender that fails.

    Two races in hivemind's reducer when a groupmate dies mid all-reduce under load (seen:
    the survivor stalled until the all-reduce timeout, 30 s, and lost the whole round):

    - a part counts as received when ``accumulate_part`` is *entered*; a sender whose call
      still waits for earlier parts when its stream breaks is then expected to add a part it
      never adds. Here a failed sender is expected only for the parts it actually added;
    - every sender awaits the part's shared future directly, so cancelling the dead sender's
      handler cancels the part for all of them (``InvalidStateError``, the others banned).
      Here each sender awaits it through ``asyncio.shield``.
    """

    def __init__(
        self,
        part_shapes: Sequence[torch.Size],
        num_senders: int,
        guard: PartGuard,
        peers: Sequence[str] = (),
    ):
        super().__init__(part_shapes, num_senders)
        self._guard = guard
        self._added = [0] * num_senders  # parts each sender has actually accumulated
        self._peers = list(peers) or [f"sender {i}" for i in range(num_senders)]
        self._pending: list = []  # (sender, part, weight) of the current part, judged when full

    async def accumulate_part(
        self, sender_index: int, part_index: int, tensor_part: torch.Tensor, weight: float = 1.0
    ) -> torch.Tensor:
        try:
            tensor_part, weight = self._guard.check(tensor_part, weight)
        except BannedException as exc:
            self._guard.report(self._peers[sender_index], f"part {part_index}: {exc}")
            raise
        assert 0 <= sender_index < self.num_senders, "invalid sender index"
        assert 0 <= part_index < self.num_parts, "invalid part index"
        self.num_parts_received[sender_index] += 1
        while part_index > self.current_part_index and not self.finished.is_set():
            await asyncio.wait(
                {self.current_part_future, asyncio.create_task(self.finished.wait())},
                return_when=asyncio.FIRST_COMPLETED,
            )
        if self.finished.is_set():
            raise AllreduceException(f"attempted to aggregate part in a finalized {self}")
        if self.sender_failed_after[sender_index] != float("inf"):
            raise BannedException(f"sender {sender_index} was banned in background")
        assert part_index == self.current_part_index
        current_part_future = self.current_part_future
        self._pending.append((sender_index, tensor_part, weight))  # summed once all are in
        self._added[sender_index] += 1
        self.current_part_accumulated_from += 1
        self.check_current_part_finished()
        # shielded: hivemind awaits the shared future itself, so cancelling one sender's handler
        # (its stream broke) cancelled the part for every sender (InvalidStateError, stall)
        return await asyncio.shield(current_part_future)

    def check_current_part_finished(self) -> None:
        assert self.current_part_accumulated_from <= self.num_current_senders
        if self.current_part_accumulated_from == self.num_current_senders:
            for _, part, weight in self._guard.robust(
                self._pending, self.current_part_index, self._peers
            ):
                self.accumulator.add_(part, alpha=weight)
                self.denominator += weight
            self._pending = []
            self.current_part_future.set_result(self.accumulator.div_(self.denominator))
            self.reset_accumulators()

    def on_sender_failed(self, sender_index: int) -> None:
        if self.sender_failed_after[sender_index] != float("inf"):
            return  # already excluded
        self.sender_failed_after[sender_index] = self._added[sender_index]
        if self.finished.is_set():
            return
        if self.current_part_index == self._added[sender_index]:  # it owes the current part
            self.num_current_senders -= 1
            self.check_current_part_finished()


class _GuardedRunner(AllReduceRunner):
    def __init__(self, *, part_guard: PartGuard, **kwargs):
        super().__init__(**kwargs)
        self.tensor_part_reducer = _GuardedReducer(
            tuple(part.shape for part in self.parts_for_local_averaging),
            len(self.sender_peer_ids),
            part_guard,
            [peer.to_base58() for peer in self.sender_peer_ids],
        )


class GroupRoundFailed(MatchmakingException):
    """The all-reduce of an assembled group failed (a groupmate died, a timeout, …).

    ``gathered`` maps each groupmate's base58 peer id to what it sent in the all-gather, so the
    host knows the round it was part of. Our tensors may be partly averaged: do not use them.
    """

    def __init__(self, message: str, gathered: dict[str, Any]):
        super().__init__(message, gathered)  # both in args: the exception is pickled to the host

    @property
    def gathered(self) -> dict[str, Any]:
        return self.args[1]

    def __str__(self) -> str:
        return str(self.args[0])


class GuardedReplicaAverager(DecentralizedAverager):
    """``DecentralizedAverager`` with guarded reducers and a pluggable shared state.

    Args (beyond hivemind's): ``part_guard`` — the :class:`PartGuard`; ``state_fn`` — called in
    the host process when a peer downloads our state, returns ``(metadata, tensors)``.
    """

    runner_type: type[AllReduceRunner] = _GuardedRunner  # the all-reduce of every round

    def __init__(
        self,
        averaged_tensors: Sequence[torch.Tensor],
        dht,
        *,
        part_guard: PartGuard,
        state_fn: Callable[[], tuple[Any, Sequence[torch.Tensor]]],
        gate=None,
        **kwargs,
    ):
        self.part_guard = part_guard  # set before the fork in super().__init__(start=True)
        self._state_fn = state_fn
        self.gate = gate
        super().__init__(averaged_tensors, dht, **kwargs)

    # -- the handlers, admitted by the gate (security.averaging_gate); hivemind builds its
    # handlers from these type annotations, so they stay hivemind's

    async def _admitted(self, context: P2PContext) -> bool:
        return self.gate is None or await self.gate.admit(self.dht, context.remote_id.to_base58())

    async def rpc_join_group(
        self, request: averaging_pb2.JoinRequest, context: P2PContext
    ) -> AsyncIterator[averaging_pb2.MessageFromLeader]:
        if not await self._admitted(context):
            yield averaging_pb2.MessageFromLeader(code=averaging_pb2.PROTOCOL_VIOLATION)
            return
        async for response in super().rpc_join_group(request, context):
            yield response

    async def rpc_aggregate_part(
        self, stream: AsyncIterator[averaging_pb2.AveragingData], context: P2PContext
    ) -> AsyncIterator[averaging_pb2.AveragingData]:
        if not await self._admitted(context):
            yield averaging_pb2.AveragingData(code=averaging_pb2.PROTOCOL_VIOLATION)
            return
        async for message in super().rpc_aggregate_part(stream, context):
            yield message

    async def rpc_download_state(
        self, request: averaging_pb2.DownloadRequest, context: P2PContext
    ) -> AsyncIterator[averaging_pb2.DownloadData]:
        if not await self._admitted(context):
            return  # the caller gets no state
        async for message in super().rpc_download_state(request, context):
            yield message

    async def _aggregate_with_group(
        self, group_info: GroupInfo, min_vector_size: int, **kwargs
    ) -> dict:
        try:
            return await super()._aggregate_with_group(group_info, min_vector_size, **kwargs)
        except BaseException as exc:  # hivemind wraps every failure, timeouts included
            gathered = {}
            for peer, blob in zip(group_info.peer_ids, group_info.gathered, strict=True):
                try:
                    gathered[peer.to_base58()] = self.serializer.loads(
                        self.serializer.loads(blob)[2]
                    )
                except Exception:  # a groupmate's malformed gather: keep the peer, no data
                    gathered[peer.to_base58()] = None
            raise GroupRoundFailed(f"{type(exc).__name__}: {exc}", gathered) from None

    async def _run_allreduce_inplace_(
        self,
        tensors: Sequence[torch.Tensor],
        group_info: GroupInfo,
        group_id: bytes | None = None,
        **kwargs,
    ) -> None:
        # hivemind's method with the runner class swapped for the guarded one
        group_id = group_info.group_id if group_id is None else group_id
        runner = self.runner_type(
            part_guard=self.part_guard,
            p2p=self._p2p,
            servicer_type=type(self),
            prefix=self.prefix,
            tensors=tensors,
            group_id=group_id,
            ordered_peer_ids=group_info.peer_ids,
            **kwargs,
        )
        assert group_id in self._running_groups, f"group {group_id} was not registered"
        self._running_groups[group_id].set_result(runner)
        if runner.modes[group_info.peer_ids.index(self.peer_id)] != AveragingMode.AUX:
            async for tensor, update in azip(as_aiter(*tensors), runner):
                tensor.add_(update, alpha=self._averaging_alpha)
                self.last_updated = get_dht_time()
                # not ``self._state_updated.set()``: hivemind re-declares the averager for state
                # download (a DHT store) on it, once per averaged tensor — dozens of stores a
                # round. Our shared state is ``state_fn``'s, not these buffers, and the declared
                # value (state_sharing_priority) re-declares itself when it changes.
        else:
            async for _ in runner:
                raise ValueError("aux peers should not receive averaged tensors")

    def get_current_state(self):
        metadata, tensors = self._state_fn()
        return metadata, list(tensors), None

    def download_state_from(self, peer: str, timeout: float) -> tuple[Any, list[torch.Tensor]]:
        """``(metadata, tensors)`` of the peer with base58 id ``peer``; raises if it fails."""
        future = MPFuture()
        self._outer_pipe.send(
            ("_download_state_from", [], dict(peer=peer, timeout=timeout, future=future))
        )
        return future.result(timeout=timeout + 5)

    async def _download_state_from(self, peer: str, timeout: float, future: MPFuture) -> None:
        try:
            future.set_result(await asyncio.wait_for(self._download_state(peer), timeout))
        except BaseException as exc:
            if not future.done():
                future.set_exception(
                    RuntimeError(f"state download from {peer} failed: {type(exc).__name__}: {exc}")
                )
            if not isinstance(exc, Exception):
                raise

    async def _download_state(self, peer: str) -> tuple[Any, list[torch.Tensor]]:
        # hivemind's _load_state_from_peers, for one given peer
        stub = self.get_stub(self._p2p, PeerID.from_base58(peer), namespace=self.prefix)
        stream = await stub.rpc_download_state(averaging_pb2.DownloadRequest())
        metadata, parts, tensors = None, [], []
        async for message in aiter_with_timeout(stream, timeout=self.next_chunk_timeout):
            if message.metadata:
                metadata = self.serializer.loads(message.metadata)
            if message.tensor_part.dtype and parts:  # a new tensor starts
                tensors.append(deserialize_torch_tensor(combine_from_streaming(parts)))
                parts = []
            parts.append(message.tensor_part)
        if parts:
            tensors.append(deserialize_torch_tensor(combine_from_streaming(parts)))
        if metadata is None:
            raise RuntimeError("the peer sent no state (state sharing off?)")
        return metadata, tensors
