"""Stage announcements in the DHT: a validated record per (peer, stage), with an expiration.

All stages of a model live under one DHT key, one subkey per ``peer:start-end``, so a client reads
the whole model's layout with a single ``get``. A daemon refreshes its records every heartbeat; a
record that is not refreshed expires and drops out of routing. On shutdown a daemon overwrites its
records with ``state: offline`` so clients stop routing to it at once.
"""

from __future__ import annotations

import concurrent.futures
import logging
from typing import Literal

from hivemind.utils import get_dht_time
from pydantic import BaseModel, ConfigDict, ValidationError

log = logging.getLogger(__name__)


class StageRecord(BaseModel):
    """What a daemon announces about one stage it hosts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    start: int
    end: int
    num_layers: int
    endpoint: str  # host:port of the gRPC service
    peer_id: str
    # joining: a span chosen by automatic placement and being loaded (never routed; it tells
    # other joining peers the span is taken, see node.placement)
    state: Literal["online", "joining", "offline"] = "online"
    load: float = 0.0  # active sessions / max sessions
    # the step scheduler over its last 30 s: mean and peak sessions per batch, steps waiting
    # now, mean batch compute time, positions computed per second
    batch_size: float = 0.0
    peak_batch_size: int = 0
    queue_depth: int = 0
    step_ms: float = 0.0
    tokens_per_s: float = 0.0
    adapters: list[str] = []
    node0_version: str = ""
    dtype: str = "float32"  # of its weights, KV-cache and the activations it sends
    device: str = "cpu"
    accepts: list[str] = ["float32"]  # activation dtypes it takes (converted to its own)
    # capacity measured on the loaded span (not load): one-session decode steps per second
    # through the whole span, and training forward / backward samples per second (one sample
    # of ``bench_tokens`` positions); 0 means not measured. Routing and placement read these.
    decode_tokens_per_s: float = 0.0
    forward_samples_per_s: float = 0.0
    backward_samples_per_s: float = 0.0
    bench_tokens: int = 0
    network_mbps: float = 0.0  # declared link throughput of the peer (0: unknown)
    hidden_size: int = 0  # bytes per position on the wire = hidden_size × dtype size

    @property
    def subkey(self) -> str:
        return f"{self.peer_id}:{self.start}-{self.end}"

    @property
    def span(self) -> tuple[int, int]:
        return (self.start, self.end)


def model_key(model: str) -> str:
    return f"node0:v1:{model}:stages"


def announce(dht, records: list[StageRecord], ttl: float, *, timeout: float = 10.0) -> None:
    """Store the records with an expiration ``ttl`` from now; raises TimeoutError if the DHT
    does not answer within ``timeout`` seconds."""
    expiration = get_dht_time() + ttl
    futures = [
        dht.store(
            model_key(r.model),
            subkey=r.subkey,
            value=r.model_dump(),
            expiration_time=expiration,
            return_future=True,
        )
        for r in records
    ]
    for record, future in zip(records, futures, strict=True):
        try:
            ok = future.result(timeout=timeout)
        except concurrent.futures.TimeoutError as exc:
            raise TimeoutError(f"DHT store of {record.subkey} timed out") from exc
        if not ok:
            log.warning("DHT store of %s was not accepted", record.subkey)


def fetch_records(dht, model: str) -> list[StageRecord]:
    """All unexpired, well-formed records of ``model`` (malformed ones are logged and skipped)."""
    found = dht.get(model_key(model), latest=True)
    if found is None or not isinstance(found.value, dict):
        return []
    records = []
    for subkey, item in found.value.items():
        try:
            records.append(StageRecord.model_validate(item.value))
        except ValidationError as exc:
            log.warning("ignoring malformed stage record %r: %s", subkey, exc)
    return sorted(records, key=lambda r: (r.start, r.end, r.peer_id))
