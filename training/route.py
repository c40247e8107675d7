"""The trainer's route: one replica per stage span, chosen by shard, opened as training jobs.

Spans come from :func:`base.routing.plan_route` (fewest hops over what is online). Among
the replicas of a span, trainer ``shard_index`` prefers the ``shard_index``-th by peer id, so
two trainers of one run land on different replicas; a replica leased to another trainer
refuses (FAILED_PRECONDITION) and the next one is tried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

from base.dht_records import StageRecord
from base.errors import SwarmError
from base.routing import plan_route, replicas_for
from training.stage_client import StageTrainClient

log = logging.getLogger(__name__)

REROUTE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ABORTED,
    }
)
"""Errors that mean "this replica is gone or lost the job": the trainer reroutes and redoes
the step. Any other status is the request's fault and fails the run."""


def is_route_failure(exc: BaseException) -> bool:
    return isinstance(exc, grpc.RpcError) and exc.code() in REROUTE_CODES


def open_route(
    records: list[StageRecord],
    model: str,
    *,
    job_id: str,
    trainer_id: str,
    shard_index: int,
    open_job: Callable[[StageTrainClient], object],
    timeout: float,
) -> tuple[list[StageTrainClient], list[object]]:
    """Open a training job on one replica of every span; returns clients and open replies."""
    spans = [r.span for r in plan_route(records, model)]
    clients, replies = [], []
    try:
        for span in spans:
            candidates = sorted(
                replicas_for(records, span, model, exclude_endpoints=frozenset()),
                key=lambda r: r.peer_id,
            )
            if not candidates:
                raise SwarmError(f"no online replica serves layers [{span[0]}, {span[1]})")
            first = shard_index % len(candidates)
            ordered = candidates[first:] + candidates[:first]
            refusals = []
            for record in ordered:
                client = StageTrainClient(
                    record.endpoint,
                    job_id=job_id,
                    start=span[0],
                    end=span[1],
                    trainer_id=trainer_id,
                    timeout=timeout,
                    peer_id=record.peer_id,
                )
                try:
                    replies.append(open_job(client))
                except grpc.RpcError as exc:
                    client.close()
                    if (
                        exc.code() in REROUTE_CODES
                        or exc.code() == grpc.StatusCode.FAILED_PRECONDITION
                    ):
                        refusals.append(f"{record.endpoint}: {exc.details()}")
                        continue
                    raise
                clients.append(client)
                break
            else:
                raise SwarmError(
                    f"no replica of layers [{span[0]}, {span[1]}) takes the job: "
                    + "; ".join(refusals)
                )
    except BaseException:
        for client in clients:
            client.close()
        raise
    return clients, replies
