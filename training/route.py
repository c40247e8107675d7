"""The trainer's route: one replica per stage span, chosen by shard, opened as training jobs.

Spans come from :func:`base.routing.plan_route` with ``objective="training"``: the chain
with the least estimated time per sample, from the forward/backward samples per second each
stage announces (:mod:`base.route_cost`). Among the replicas of a span, fastest first (then by
peer id), trainer ``shard_index`` prefers the ``shard_index``-th, so two trainers of one run
land on different replicas. A replica that cannot take the job but
another might (its lease belongs to another trainer, it is unreachable, it lost the span: a
failure whose :class:`base.refusals.Reason` is ``elsewhere``) is skipped for the next one; any
other refusal is the job's fault and fails the run with its family's error (an adapter with
other LoRA settings: a ``ConfigError``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc

from base.dht_records import StageRecord
from base.errors import SwarmError
from base.refusals import call_failure
from base.route_cost import CostModel
from base.routing import plan_route, replicas_for
from training.stage_client import StageTrainClient

log = logging.getLogger(__name__)


def is_route_failure(exc: BaseException) -> bool:
    """The call failed in a way another replica can recover from: reroute and redo the step."""
    return isinstance(exc, grpc.RpcError) and call_failure(exc).elsewhere


def refusal_error(exc: grpc.RpcError, what: str) -> Exception:
    """A failed stage call as the node0 error of its reason's family (raised ``from exc``)."""
    failure = call_failure(exc)
    return failure.family(f"{what} ({failure})")


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
    """Open a training job on one replica of every span; returns clients and open replies.

    Raises:
        SwarmError: no replica of some span takes the job (each one's refusal named).
        ConfigError, RequestError: a stage refused the job itself (its reason's family).
    """
    route = plan_route(records, model, objective="training")
    costs = CostModel.build(
        [r for r in records if r.model == model and r.state == "online"], objective="training"
    )
    clients, replies = [], []
    try:
        for k, hop in enumerate(route):
            span = hop.span
            candidates = sorted(
                replicas_for(
                    records,
                    span,
                    model,
                    exclude_endpoints=frozenset(),
                    like=hop,  # same dtype as the planned hop, so the next one takes it
                    takes=route[k - 1].dtype if k else None,
                    objective="training",
                ),
                key=lambda r: (round(costs.hop_s(r), 6), r.peer_id),
            )
            if not candidates:
                raise SwarmError(f"no online replica serves layers [{span[0]}, {span[1]})")
            first = shard_index % len(candidates)
            ordered = candidates[first:] + candidates[:first]
            refusals, last = [], None
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
                    failure = call_failure(exc)
                    if not failure.elsewhere:
                        where = f"stage [{span[0]}, {span[1]}) at {record.endpoint}"
                        raise refusal_error(exc, f"{where} refused the job") from exc
                    refusals.append(f"{record.endpoint}: {failure}")
                    last = exc
                    continue
                clients.append(client)
                break
            else:
                raise SwarmError(
                    f"no replica of layers [{span[0]}, {span[1]}) takes the job: "
                    + "; ".join(refusals)
                ) from last
    except BaseException:
        for client in clients:
            client.close()
        raise
    return clients, replies
