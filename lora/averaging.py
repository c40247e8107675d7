"""Averaging adapter gradients between replicas of one stage through hivemind.

Protocol of one round (one optimizer step), run by every replica of a stage:

1. The replica copies its accumulated adapter gradients into the averager's buffers. Non-finite
   gradients are replaced by zeros and sent with weight 0 (the replica still takes part, so it
   applies the same averaged gradient as the others); otherwise the weight is the number of
   local samples.
2. ``DecentralizedAverager.step`` finds the group (replicas under the same key: model, layer
   span, run id, adapter name) and runs the all-reduce; incoming parts are checked on arrival
   (:mod:`lora.allreduce_guard`). Groupmates exchange a random nonce and their config
   fingerprint through hivemind's all-gather; a fingerprint that differs from ours is a
   configuration error, never averaged over.
3. hivemind returns normally even when a groupmate died mid-round and only some parts were
   averaged. So each member publishes a checksum of its averaged tensors in the DHT under the
   round id (hash of the group's nonces) and reads the others'. All published checksums agree
   → the round is consistent (members that never published are reported as ``missing``: the
   survivors still hold identical gradients). Any disagreement → a partial round: every member
   restores its local gradient and runs the round again (``max_retries``); if the survivors
   still disagree, each keeps its local gradient and the report says so.
4. No group within ``matchmaking_timeout`` (the replica is alone, or the others are gone): the
   local gradient is kept and the report says ``averaged=False``.

A replica that joins late calls :meth:`StageGradientAverager.load_state_from_peers`: it
downloads the adapter tensors, optimizer state and step from the most advanced replica.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

os.environ.setdefault("HIVEMIND_MEMORY_SHARING_STRATEGY", "file_descriptor")

import torch  # noqa: E402
from hivemind.averaging.control import AveragingStage  # noqa: E402
from hivemind.compression import Float16Compression, NoCompression  # noqa: E402
from hivemind.utils.timed_storage import get_dht_time  # noqa: E402

from lora.allreduce_guard import GuardedReplicaAverager, PartGuard  # noqa: E402
from lora.config import AveragingSettings, LoraSettings  # noqa: E402
from node.errors import ConfigError  # noqa: E402
from provenance import sha256_json  # noqa: E402

log = logging.getLogger(__name__)

_CONFIG_TTL = 60.0  # seconds a replica's config declaration lives in the DHT (refreshed)


class AveragingConfigError(ConfigError):
    """Replicas under one averaging key were built with different adapter configurations."""


def averaging_prefix(model: str, start: int, end: int, run_id: str, adapter: str) -> str:
    """The DHT key prefix that groups the replicas of one stage's adapter in one run."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", model).strip("_")[-40:] or "model"
    digest = hashlib.sha256(model.encode()).hexdigest()[:8]
    run = re.sub(r"[^A-Za-z0-9_-]+", "_", run_id)
    return f"node0_lora_{slug}_{digest}_L{start}-{end}_{run}_{adapter}"


@dataclass(frozen=True)
class AveragingReport:
    """The outcome of one :meth:`StageGradientAverager.average` call."""

    round: int  # local round counter (1-based)
    averaged: bool  # the gradients now hold a group average (False: the local gradient)
    consistent: bool  # every groupmate that published a checksum holds the same result
    group_size: int  # peers in the final attempt's group (1 when no group was found)
    agreeing: int  # groupmates (with us) whose checksums matched ours
    missing: int  # groupmates that never published a checksum (likely died mid-round)
    partial_detected: bool  # an attempt ended with disagreeing survivors
    attempts: int
    weight: float  # the weight we declared
    local_nonfinite: bool  # our gradient was non-finite and was sent as zeros with weight 0
    rejected_parts: int  # incoming parts refused this round (non-finite values or weight)
    clipped_parts: int  # incoming parts scaled down to max_part_norm this round
    seconds: float
    error: str = ""  # why no group was found, if so


@dataclass(frozen=True)
class LoadedState:
    step: int
    source_fingerprint: str


def _probe_vectors(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    vectors = []
    for index, param in enumerate(params):
        generator = torch.Generator().manual_seed(1_000_003 * index + param.numel())
        signs = torch.randint(0, 2, (param.numel(),), generator=generator, dtype=torch.int8)
        vectors.append(signs.to(torch.float64) * 2 - 1)
    return vectors


class StageGradientAverager:
    """Averages the gradients of ``params`` with the other replicas of the same stage.

    Args:
        dht: a running ``hivemind.DHT`` (see :func:`node.dht.start_dht`).
        prefix: the averaging key, from :func:`averaging_prefix`.
        params: the adapter parameters in a fixed order (:func:`lora.adapter_parameters`);
            their ``.grad`` is read and replaced by :meth:`average`.
        settings: timeouts, group size, compression and defences.
        lora: the adapter's settings; part of the fingerprint replicas must share.
        optimizer: its state is shared with late joiners (and loaded from peers).
        lock: held while gradients, parameters or optimizer state are read or written (the
            training job's lock); a private lock when omitted.
    """

    def __init__(self, dht, *, prefix: str, params: Sequence[torch.nn.Parameter],
                 settings: AveragingSettings, lora: LoraSettings | None = None,
                 optimizer: torch.optim.Optimizer | None = None,
                 lock: threading.Lock | threading.RLock | None = None):
        if "." in prefix:
            raise ValueError("prefix must not contain '.'")
        self.dht = dht
        self.prefix = prefix
        self.params = list(params)
        self.settings = settings
        self.optimizer = optimizer
        self.lock = lock or threading.RLock()
        self.step = 0  # optimizer steps applied; set by the caller, shared with late joiners
        self.rounds = 0
        self.fingerprint = sha256_json({
            "lora": lora.fingerprint() if lora is not None else None,
            "tensors": [[list(p.shape), str(p.dtype)] for p in self.params],
            "compression": settings.compression,
        })
        self._probes = _probe_vectors(self.params)
        self._buffers = [torch.zeros(p.shape, dtype=torch.float32) for p in self.params]
        self.guard = PartGuard(max_part_norm=settings.max_part_norm,
                               max_peer_weight=settings.max_peer_weight)
        self._control = None
        self._me = secrets.token_hex(8)  # our subkey in the config declaration
        self._joined_at = get_dht_time()
        compression = (Float16Compression() if settings.compression == "float16"
                       else NoCompression())
        self._declare_config()
        self._check_config_peers()
        self._averager = GuardedReplicaAverager(
            self._buffers, dht, part_guard=self.guard, state_fn=self._current_state,
            start=True, prefix=prefix,
            target_group_size=settings.target_group_size,
            min_group_size=settings.min_group_size,
            min_matchmaking_time=settings.min_matchmaking_time,
            request_timeout=settings.request_timeout,
            allreduce_timeout=settings.allreduce_timeout,
            next_chunk_timeout=settings.next_chunk_timeout,
            compression=compression,
            part_size_bytes=settings.part_size_bytes,
            allow_state_sharing=True,
            declare_state_period=10.0,
        )
        self.peer_id = self._averager.peer_id

    # -- configuration agreement ---------------------------------------------------------------

    def _declare_config(self) -> None:
        self.dht.store(f"{self.prefix}.config", [self.fingerprint, self._joined_at],
                       expiration_time=get_dht_time() + _CONFIG_TTL, subkey=self._me)
        self._declared_at = time.monotonic()

    def _check_config_peers(self) -> None:
        """Refuse if the run's established configuration differs from ours.

        The established configuration is that of the longest-present live replica, so a
        newcomer with another configuration refuses, and never drives the incumbents out.
        """
        found = self.dht.get(f"{self.prefix}.config", latest=True)
        if found is None or not isinstance(found.value, dict):
            return
        declared = [(float(entry.value[1]), str(sub), str(entry.value[0]))
                    for sub, entry in found.value.items()
                    if isinstance(entry.value, list | tuple) and len(entry.value) == 2]
        declared.append((self._joined_at, self._me, self.fingerprint))
        _, _, established = min(declared)
        if established != self.fingerprint:
            raise AveragingConfigError(
                f"replicas under averaging key {self.prefix!r} use another adapter "
                f"configuration (fingerprint {established[:12]}…, ours "
                f"{self.fingerprint[:12]}…); refusing to average with them",
                hint="use the same LoraSettings, layer range and compression on every replica "
                     "of a run, or a different run id")

    # -- one round -----------------------------------------------------------------------------

    @property
    def stage(self) -> AveragingStage:
        """Where the current round is (IDLE when none runs)."""
        control = self._control
        return control.stage if control is not None else AveragingStage.IDLE

    def _checksum(self, tensors: Sequence[torch.Tensor]) -> list[float]:
        out = []
        for tensor, probe in zip(tensors, self._probes, strict=True):
            flat = tensor.detach().reshape(-1).to(torch.float64)
            out += [float(flat.abs().sum()), float(flat @ probe)]
        return out

    def _agrees(self, mine: list[float], theirs) -> bool:
        if not isinstance(theirs, list | tuple) or len(theirs) != len(mine):
            return False
        rtol = self.settings.checksum_rtol
        for i in range(0, len(mine), 2):
            scale = max(abs(mine[i]), abs(float(theirs[i]))) + 1e-12
            if abs(mine[i] - theirs[i]) > rtol * scale or \
                    abs(mine[i + 1] - theirs[i + 1]) > rtol * scale:
                return False
        return True

    def _exchange_checksums(self, round_id: str, mine: list[float],
                            members: set[str]) -> dict[str, list[float]]:
        key = f"{self.prefix}.check.{round_id}"
        me = self.peer_id.to_base58()
        self.dht.store(key, mine, expiration_time=get_dht_time() + 120, subkey=me)
        deadline = time.monotonic() + self.settings.check_timeout
        published: dict[str, list[float]] = {me: mine}
        while True:
            found = self.dht.get(key, latest=True)
            if found is not None and isinstance(found.value, dict):
                for sub, entry in found.value.items():
                    if sub in members:
                        published[sub] = entry.value
            if set(published) >= members or time.monotonic() >= deadline:
                return published
            time.sleep(0.1)

    def _read_local_gradients(self) -> list[torch.Tensor]:
        with self.lock:
            return [p.grad.detach().to(torch.float32).clone() if p.grad is not None
                    else torch.zeros(p.shape, dtype=torch.float32) for p in self.params]

    def average(self, local_samples: float) -> AveragingReport:
        """Replace every param's ``.grad`` by the replicas' weighted mean; see the module doc.

        Blocks for at most about ``attempts x (matchmaking_timeout + allreduce_timeout +
        check_timeout)``; never raises for a lost or partial round (only for a configuration
        mismatch, :class:`AveragingConfigError`).
        """
        started = time.monotonic()
        self.rounds += 1
        if time.monotonic() - self._declared_at > _CONFIG_TTL / 3:
            self._declare_config()
        self._check_config_peers()
        local = self._read_local_gradients()
        nonfinite = not all(bool(torch.isfinite(t).all()) for t in local)
        if nonfinite:
            local = [torch.zeros_like(t) for t in local]
            weight = 0.0
        else:
            weight = min(max(float(local_samples), 0.0), self.settings.max_peer_weight)
        rejected0, clipped0 = self.guard.rejected, self.guard.clipped
        attempts, partial, error = 0, False, ""
        result, averaged, consistent, group_size, agreeing, missing = local, False, True, 1, 1, 0
        while True:
            attempts += 1
            with self._averager.get_tensors() as buffers:
                for buffer, grad in zip(buffers, local, strict=True):
                    buffer.copy_(grad)
            nonce = secrets.token_hex(16)
            gathered = None
            try:
                self._control = self._averager.step(
                    gather={"nonce": nonce, "fingerprint": self.fingerprint}, weight=weight,
                    timeout=self.settings.matchmaking_timeout, allow_retries=False, wait=False)
                gathered = self._control.result(timeout=self.settings.matchmaking_timeout
                                                + self.settings.allreduce_timeout + 5)
            except Exception as exc:  # no group, all-reduce failure, timeout
                error = f"{type(exc).__name__}: {exc}"
                log.info("averaging round %d attempt %d found no group: %s", self.rounds,
                         attempts, error)
            finally:
                self._control = None
            if not gathered:
                result, averaged, consistent, group_size, agreeing, missing = (
                    local, False, not partial, 1, 1, 0)
                break
            group_size = len(gathered)
            foreign = {str(peer): data.get("fingerprint") for peer, data in gathered.items()
                       if isinstance(data, dict) and data.get("fingerprint") != self.fingerprint}
            if foreign:
                self._write_gradients(local)
                raise AveragingConfigError(
                    f"groupmates {sorted(foreign)} averaged under {self.prefix!r} with another "
                    "adapter configuration; their round was discarded",
                    hint="use the same LoraSettings on every replica of a run")
            nonces = sorted(str(d.get("nonce")) for d in gathered.values()
                            if isinstance(d, dict))
            round_id = hashlib.sha256("|".join(nonces).encode()).hexdigest()[:24]
            with self._averager.get_tensors() as buffers:
                result = [buffer.clone() for buffer in buffers]
            mine = self._checksum(result)
            members = {peer.to_base58() for peer in gathered}
            published = self._exchange_checksums(round_id, mine, members)
            agreeing = sum(self._agrees(mine, theirs) for theirs in published.values())
            missing = len(members) - len(published)
            if agreeing == len(published):
                averaged, consistent = True, True
                if missing:
                    log.warning("averaging round %d: %d groupmate(s) never confirmed (died "
                                "mid-round?); the %d survivor(s) agree", self.rounds, missing,
                                agreeing)
                break
            partial = True
            log.warning("averaging round %d attempt %d was partial: %d of %d published "
                        "checksums differ from ours", self.rounds, attempts,
                        len(published) - agreeing, len(published))
            if attempts > self.settings.max_retries:
                result, averaged, consistent = local, False, False
                break
        self._write_gradients(result)
        return AveragingReport(
            round=self.rounds, averaged=averaged, consistent=consistent, group_size=group_size,
            agreeing=agreeing, missing=missing, partial_detected=partial or missing > 0,
            attempts=attempts, weight=weight, local_nonfinite=nonfinite,
            rejected_parts=self.guard.rejected - rejected0,
            clipped_parts=self.guard.clipped - clipped0,
            seconds=time.monotonic() - started, error=error)

    def _write_gradients(self, tensors: Sequence[torch.Tensor]) -> None:
        with self.lock:
            for param, tensor in zip(self.params, tensors, strict=True):
                param.grad = tensor.to(param.dtype).clone()

    # -- state for late joiners ----------------------------------------------------------------

    def set_step(self, step: int) -> None:
        """Record the optimizer steps applied; peers download from the most advanced replica."""
        self.step = int(step)
        self._averager.state_sharing_priority = float(step)

    def _current_state(self):
        with self.lock:
            tensors = [p.detach().to(torch.float32).clone() for p in self.params]
            layout, opt_scalars = [], {}
            if self.optimizer is not None:
                state = self.optimizer.state_dict()["state"]
                for index in sorted(state):
                    for key in sorted(state[index]):
                        value = state[index][key]
                        if isinstance(value, torch.Tensor):
                            layout.append([index, key])
                            tensors.append(value.detach().clone())
                        else:
                            opt_scalars[f"{index}/{key}"] = value
        metadata = {"fingerprint": self.fingerprint, "step": self.step, "layout": layout,
                    "scalars": opt_scalars, "n_params": len(self.params)}
        return metadata, tensors

    def load_state_from_peers(self, timeout: float = 30.0) -> LoadedState | None:
        """Copy adapter tensors, optimizer state and step from a peer; None if nobody answers."""
        loaded = self._averager.load_state_from_peers(timeout=timeout)
        if loaded is None:
            return None
        metadata, tensors = loaded
        if metadata.get("fingerprint") != self.fingerprint:
            raise AveragingConfigError(
                f"the peer's state under {self.prefix!r} was made with another adapter "
                "configuration; not loaded")
        n = int(metadata["n_params"])
        if n != len(self.params) or any(tuple(t.shape) != tuple(p.shape)
                                        for t, p in zip(tensors[:n], self.params, strict=True)):
            raise AveragingConfigError("the peer's adapter tensors have other shapes")
        with self.lock, torch.no_grad():
            for param, tensor in zip(self.params, tensors[:n], strict=True):
                param.copy_(tensor.to(param.dtype))
            if self.optimizer is not None and metadata["layout"]:
                state: dict[int, dict] = {}
                for (index, key), tensor in zip(metadata["layout"], tensors[n:], strict=True):
                    state.setdefault(int(index), {})[key] = tensor
                for name, value in metadata["scalars"].items():
                    index, key = name.split("/", 1)
                    state.setdefault(int(index), {})[key] = value
                current = self.optimizer.state_dict()
                self.optimizer.load_state_dict({"state": state,
                                                "param_groups": current["param_groups"]})
        self.set_step(int(metadata["step"]))
        return LoadedState(step=self.step, source_fingerprint=metadata["fingerprint"])

    def shutdown(self) -> None:
        self._averager.shutdown()
