"""A client for one stage session: OpenSession, a bidirectional Step stream, CloseSession.

Uses grpc.aio so each step can be bounded by a timeout without a thread per stream. A failed
call is sorted by its :class:`base.refusals.Reason` (or, without one, its status): one that
another replica may serve (the peer died or timed out, evicted the session, is full, lacks the
adapter) is :class:`StageUnavailable`, so the session fails over; any other is the error of the
reason's family (a prompt past the context window: ``RequestError``).
"""

from __future__ import annotations

import asyncio

import grpc
import torch

from base.errors import Node0Error, PeerFailureError
from base.refusals import call_failure
from base.sampler import SamplingParams
from proto import node0_pb2, node0_pb2_grpc
from proto.channels import channel_options
from proto.tensor_codec import decode, encode
from security.active import call_signer
from security.credentials import Role
from security.grpc_auth import aio_interceptors


class StageUnavailable(Exception):
    """The replica failed in a way another replica can recover from.

    ``family``: the error to raise when no other replica can (a peer failure, or the family of
    the reason every replica gave, e.g. ``SwarmError`` when all are full)."""

    def __init__(self, message: str, family: type[Node0Error] = PeerFailureError):
        super().__init__(message)
        self.family = family


class StageSessionClient:
    def __init__(
        self,
        endpoint: str,
        *,
        model: str,
        start: int,
        end: int,
        step_timeout: float,
        max_message_bytes: int = 64 * 1024 * 1024,
    ):
        self.endpoint = endpoint
        self.model, self.start, self.end = model, start, end
        self.step_timeout = step_timeout
        self._channel = grpc.aio.insecure_channel(
            endpoint,
            options=channel_options(max_message_bytes),
            interceptors=aio_interceptors(call_signer(Role.CLIENT)),
        )
        self._stub = node0_pb2_grpc.StageStub(self._channel)
        self._call = None
        self.session_id: str | None = None

    async def _guard(self, awaitable):
        try:
            # a deadline on this task, not wait_for's extra task per call
            async with asyncio.timeout(self.step_timeout):
                return await awaitable
        except TimeoutError as exc:
            raise StageUnavailable(
                f"{self.endpoint}: no answer within {self.step_timeout:g} s"
            ) from exc
        except grpc.aio.AioRpcError as exc:
            failure = call_failure(exc)
            if failure.elsewhere:
                raise StageUnavailable(f"{self.endpoint}: {failure}", failure.family) from exc
            # the stage refused the request itself: another replica would refuse it too
            raise failure.family(
                f"stage [{self.start}, {self.end}) at {self.endpoint} refused "
                f"the request ({failure})"
            ) from exc
        except asyncio.InvalidStateError as exc:
            # grpc.aio raises this (not an RpcError) when writing to a stream that the peer
            # already ended, e.g. because it died between two steps
            raise StageUnavailable(f"{self.endpoint}: stream already ended") from exc

    async def open(self, max_length: int, adapters: tuple[str, ...] = ()) -> None:
        request = node0_pb2.OpenSessionRequest(
            model=self.model,
            start=self.start,
            end=self.end,
            max_length=max_length,
            adapters=list(adapters),
        )
        response = await self._guard(self._stub.OpenSession(request))
        self.session_id = response.session_id
        self._call = self._stub.Step()

    async def step(
        self,
        position: int,
        inputs: torch.Tensor,
        *,
        sampling: SamplingParams | None = None,
        return_logits: bool = False,
    ) -> node0_pb2.StepResponse:
        request = node0_pb2.StepRequest(
            session_id=self.session_id, position=position, return_logits=return_logits
        )
        encode(inputs, into=request.input)
        if sampling is not None:
            request.sample = True
            request.sampling.CopyFrom(
                node0_pb2.SamplingParams(
                    temperature=sampling.temperature,
                    top_k=sampling.top_k,
                    top_p=sampling.top_p,
                    seed=sampling.seed,
                )
            )
        response = await self._guard(self._exchange(request))
        if response is grpc.aio.EOF:
            raise StageUnavailable(f"{self.endpoint}: stream ended")
        return response

    async def _exchange(self, request: node0_pb2.StepRequest) -> node0_pb2.StepResponse:
        """One step on the stream: write the request, read its answer (one deadline for both)."""
        await self._call.write(request)
        return await self._call.read()

    async def close(self) -> None:
        try:
            if self._call is not None:
                self._call.cancel()
            if self.session_id is not None:
                await asyncio.wait_for(
                    self._stub.CloseSession(
                        node0_pb2.CloseSessionRequest(session_id=self.session_id)
                    ),
                    2.0,
                )
        except (grpc.aio.AioRpcError, TimeoutError):
            pass  # the peer may be gone; its idle eviction frees the cache
        finally:
            await self._channel.close()


def output_tensor(response: node0_pb2.StepResponse) -> torch.Tensor:
    return decode(response.output)


def logits_tensor(response: node0_pb2.StepResponse) -> torch.Tensor:
    return decode(response.logits)
