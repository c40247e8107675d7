"""Stage announcements in the DHT: a validated record per (peer, stage), with an expiration.

All stage records of the swarm live under one DHT key (:data:`STAGES_KEY`), one subkey per
``model|peer:start-end[owner:<key>]``, so a client reads a model's layout with a single ``get``.
The owner marker makes the record writable by its owner alone: the DHT peer signs it, and every
peer checks the signature and the record's schema (:mod:`base.dht_schema`). A daemon refreshes
its records every heartbeat; a record that is not refreshed expires and drops out of routing. On
shutdown a daemon overwrites its records with ``state: offline`` so clients stop routing to it at
once.
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
    # the peer's link throughput in Mbit/s (0: unknown) and where it came from: "measured" by
    # the daemon against other daemons (node.net_probe), or "declared" by its operator
    # (placement.network_mbps); "" while neither is known
    network_mbps: float = 0.0
    network_source: Literal["", "measured", "declared"] = ""
    hidden_size: int = 0  # bytes per position on the wire = hidden_size × dtype size

    @property
    def subkey(self) -> str:
        return f"{self.peer_id}:{self.start}-{self.end}"

    @property
    def span(self) -> tuple[int, int]:
        return (self.start, self.end)


STAGES_KEY = "node0:v1:stages"
"""The DHT key every stage record lives under (its subkeys: :func:`dht_subkey`)."""


def dht_subkey(record: StageRecord, owner: str) -> str:
    """The record's subkey: model, peer and span, then ``owner`` (``[owner:<public key>]``)."""
    return f"{record.model}|{record.subkey}{owner}"


def _owner_of(dht) -> str:
    owner = getattr(dht, "owner_marker", None)
    if owner is None:
        raise ValueError("this DHT peer signs no records: start it with base.dht.start_dht")
    return owner


def announce(dht, records: list[StageRecord], ttl: float, *, timeout: float = 10.0) -> None:
    """Store the records, signed, with an expiration ``ttl`` from now; raises TimeoutError if
    the DHT does not answer within ``timeout`` seconds."""
    owner = _owner_of(dht)
    expiration = get_dht_time() + ttl
    futures = [
        dht.store(
            STAGES_KEY,
            subkey=dht_subkey(r, owner),
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
    """All unexpired, well-formed records of ``model`` (malformed ones are logged and skipped).

    Each record came through the DHT's signature and schema checks; one whose content does not
    name the model, peer and span of its subkey is skipped too (an owner may write only its own
    subkeys, and a record names the subkey it was written under), and so is one whose
    ``peer_id`` is not the libp2p peer id of its owner key (a daemon's identity is its signing
    key: :func:`base.dht.start_dht` ``owner_identity``), so a host cannot announce a record that
    claims another peer's id.
    """
    from base.dht_schema import peer_id_of_owner  # imports this module

    found = dht.get(STAGES_KEY, latest=True)
    if found is None or not isinstance(found.value, dict):
        return []
    records = []
    for subkey, item in found.value.items():
        if not isinstance(subkey, str) or not subkey.startswith(f"{model}|"):
            continue
        try:
            record = StageRecord.model_validate(item.value)
        except ValidationError as exc:
            log.warning("ignoring malformed stage record %r: %s", subkey, exc)
            continue
        if record.model != model or not subkey.startswith(f"{model}|{record.subkey}[owner:"):
            log.warning("ignoring stage record %r: it names another subkey", subkey)
            continue
        if peer_id_of_owner(subkey) != record.peer_id:
            log.warning("ignoring stage record %r: not owned by peer %s", subkey, record.peer_id)
            continue
        records.append(record)
    return sorted(records, key=lambda r: (r.start, r.end, r.peer_id))
