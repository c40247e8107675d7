"""Averaging adapter gradients between replicas of one stage through hivemind.

Protocol of one round (one optimizer step), run by every replica of a stage:

1. The replica copies its accumulated adapter gradients into the averager's buffers. Non-finite
   gradients are replaced by zeros and sent with weight 0 (the replica still takes part, so it
   applies the same averaged gradient as the others); otherwise the weight is the number of
   local samples. It also takes a checksum of its *state* (adapter tensors and optimizer state,
   which nobody changes during the call).
2. ``DecentralizedAverager.step`` finds the group (replicas under the same key: model, layer
   span, run id, adapter name) and runs the all-reduce; incoming parts are checked on arrival
   (:mod:`lora.allreduce_guard`). Groupmates exchange a nonce, their config fingerprint, their
   state checksum and step through hivemind's all-gather; a fingerprint that differs from ours
   is a configuration error, never averaged over.
3. Every member of the group — also one whose all-reduce failed, which still learns the group
   from :class:`~lora.allreduce_guard.GroupRoundFailed` — publishes what it ended with under the
   round id (hash of the group's nonces): the checksum of its averaged tensors, or of its local
   gradient with ``ok=False``. A member that completed reads the others' for ``check_timeout``.
   All published checksums agree → the round is consistent (members that never published are
   ``missing``). Any disagreement or failure → the attempt was partial: every member that sees
   it restores its local gradient and runs the round again among the survivors
   (``max_retries``); a member whose own all-reduce failed reruns at once.
4. No group within ``matchmaking_timeout``: if a partner replica is still due at this round
   (alive, not past it, looking or trained lately: :mod:`lora.replica_presence`), look again,
   for up to ``partner_wait`` seconds in all; otherwise the local gradient is kept
   (``averaged=False``). A round is the optimizer step (``per_step``) or DiLoCo's outer step
   (``diloco``: :attr:`StageGradientAverager.round_step`). In DiLoCo mode the outer step is
   also in the matchmaking key (hivemind's group bits), so replicas at different outer steps
   never average together: a replica that reached outer step n first waits for its partner's
   outer step n, however far apart their local steps ran.
5. The group's state checksums are compared. States that differ mean an earlier round diverged
   (a failure seen too late to redo, a round a replica spent alone, float drift): the *source*
   (highest step, then the most groupmates agreeing with it, then the lowest peer id) stays in
   :meth:`~StageGradientAverager.average` until every differing member has downloaded its
   state, checked it against the source's checksum and loaded it (``resync_timeout``). The
   round's averaged gradient is then applied to equal states, so replicas that average together
   are equal again after the step, and both reports say what happened.

A replica that joins late calls :meth:`StageGradientAverager.load_state_from_peers`: it
downloads the adapter tensors, optimizer state and step from the most advanced replica.

Whatever the stage's device and dtype, gradients are averaged and states shared in float32 on
the host (adapters are float32 on every stage: :func:`lora.stage_adapters.attach_adapter`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("HIVEMIND_MEMORY_SHARING_STRATEGY", "file_descriptor")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from hivemind.averaging.control import AveragingStage  # noqa: E402
from hivemind.utils.timed_storage import get_dht_time  # noqa: E402

from base.errors import ConfigError  # noqa: E402
from lora.allreduce_guard import GroupRoundFailed, GuardedReplicaAverager, PartGuard  # noqa: E402
from lora.compression import QUANTIZED, wire_compression  # noqa: E402
from lora.config import AveragingSettings, LoraSettings  # noqa: E402
from lora.dht_calls import bounded_get, bounded_store  # noqa: E402
from lora.replica_presence import ReplicaPresence  # noqa: E402
from lora.shared_results import SharedResultAverager  # noqa: E402
from provenance import sha256_json  # noqa: E402
from security import access as security_access  # noqa: E402

log = logging.getLogger(__name__)

_CONFIG_TTL = 60.0  # seconds a replica's config declaration lives in the DHT (refreshed)
_RECORD_TTL = 120.0  # seconds round checksums and resync confirmations live in the DHT
_ROUND_BITS = 16  # bits of a DiLoCo outer step in the matchmaking key (round_bits)


class AveragingConfigError(ConfigError):
    """Replicas under one averaging key were built with different adapter configurations."""


def averaging_prefix(model: str, start: int, end: int, run_id: str, adapter: str) -> str:
    """The DHT key prefix that groups the replicas of one stage's adapter in one run."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", model).strip("_")[-40:] or "model"
    digest = hashlib.sha256(model.encode()).hexdigest()[:8]
    run = re.sub(r"[^A-Za-z0-9_-]+", "_", run_id)
    return f"node0_lora_{slug}_{digest}_L{start}-{end}_{run}_{adapter}"


def round_bits(rounds: int) -> str:
    """hivemind group bits naming a DiLoCo outer step (``rounds`` passed before it), 16 bits:
    replicas 65,536 outer steps apart would share a key, and their state check resyncs them."""
    return format(rounds % (1 << _ROUND_BITS), f"0{_ROUND_BITS}b")


@dataclass(frozen=True)
class AveragingReport:
    """The outcome of one :meth:`StageGradientAverager.average` call."""

    round: int  # local round counter (1-based)
    averaged: bool  # the gradients now hold a group average (False: the local gradient)
    consistent: bool  # no sign that a groupmate ended this round with other values (see doc)
    group_size: int  # peers in the final attempt's group (1 when no group was found)
    agreeing: int  # groupmates (with us) whose checksums matched ours
    missing: int  # groupmates that never published a checksum (died, or failed late)
    partial_detected: bool  # an attempt was partial or failed (see ``attempts``)
    attempts: int
    weight: float  # the weight we declared
    local_nonfinite: bool  # our gradient was non-finite and was sent as zeros with weight 0
    rejected_parts: int  # incoming parts refused this round (non-finite values or weight)
    clipped_parts: int  # incoming parts scaled down to max_part_norm this round
    seconds: float
    error: str = ""  # why an attempt found no group or failed, if one did
    diverged: int = 0  # groupmates whose state at the round's start differed from the source's
    resynced: bool = False  # we loaded the source replica's state this round (see ``diverged``)
    excluded: tuple = ()  # (peer id, why) whose parts this replica left out (allreduce_guard)


@dataclass(frozen=True)
class LoadedState:
    step: int
    source_fingerprint: str


class _Checksum:
    """Per tensor, its L2 norm and its dot product with a fixed random ±1 vector (float64).

    For tensors x and y the projections differ by about ``||x - y||`` (a ±1 projection of
    ``x - y`` has that standard deviation), so comparing norms and projections within
    ``rtol * norm`` tests ``||x - y|| <~ rtol * ||x||`` without sending the tensors.
    """

    def __init__(self):
        self._probes: dict[int, torch.Tensor] = {}

    def _probe(self, numel: int) -> torch.Tensor:
        if numel not in self._probes:
            generator = torch.Generator().manual_seed(1_000_003 + numel)
            signs = torch.randint(0, 2, (numel,), generator=generator, dtype=torch.int8)
            self._probes[numel] = signs.to(torch.float64) * 2 - 1
        return self._probes[numel]

    def __call__(self, tensors: Sequence[torch.Tensor]) -> list[float]:
        out = []
        for tensor in tensors:
            flat = tensor.detach().reshape(-1).to("cpu", torch.float64)
            out += [float(torch.linalg.vector_norm(flat)), float(flat @ self._probe(flat.numel()))]
        return out


def pack_checksum(values: Sequence[float]) -> bytes:
    """A state checksum as float32 bytes for the all-gather: hivemind's leader sends every
    member's gather to every member, and msgpack writes a float in 9 bytes; float32 (4 bytes,
    relative rounding 6e-8) is far inside the tolerances states are compared at (>= 1e-3)."""
    return np.asarray(values, dtype="<f4").tobytes()


def unpack_checksum(blob: Any) -> list[float]:
    """:func:`pack_checksum`'s values; ``ValueError`` for anything else (a malformed gather)."""
    if not isinstance(blob, bytes) or len(blob) % 4:
        raise ValueError("not a packed checksum")
    return np.frombuffer(blob, dtype="<f4").astype(np.float64).tolist()


def _close(x: float, y: float, tol: float) -> bool:
    if math.isnan(x) or math.isnan(y):  # every replica non-finite: the mean is NaN everywhere
        return math.isnan(x) and math.isnan(y)
    return x == y or abs(x - y) <= tol


def checksums_agree(
    mine: Sequence[float], theirs: Any, rtol: float, scales: Sequence[float] = ()
) -> bool:
    """Whether two :class:`_Checksum` lists describe the same tensors within ``rtol``.

    ``scales`` (one per tensor) raises the reference norm, e.g. to the norm of the local
    gradients when the results are much smaller than them.
    """
    if not isinstance(theirs, list | tuple) or len(theirs) != len(mine):
        return False
    for i in range(0, len(mine), 2):
        scale = max(abs(mine[i]), abs(float(theirs[i])), *scales[i // 2 : i // 2 + 1])
        if not (
            _close(mine[i], float(theirs[i]), rtol * scale)
            and _close(mine[i + 1], float(theirs[i + 1]), rtol * scale)
        ):
            return False
    return True


def resync_plan(
    states: dict[str, tuple[list[float], int]], rtol: float
) -> tuple[str | None, list[str]]:
    """Which groupmate's state the others copy, and whose state differs from it.

    ``states`` maps peer id → (state checksum, step). The source is the member with the highest
    step, then the most members agreeing with it, then the lowest peer id; every member computes
    the same answer from the same all-gather. Returns ``(None, [])`` when all states agree.
    """
    if len(states) < 2:
        return None, []

    def support(peer: str) -> int:
        return sum(checksums_agree(states[peer][0], other[0], rtol) for other in states.values())

    source = min(states, key=lambda peer: (-states[peer][1], -support(peer), peer))
    differing = sorted(
        peer
        for peer in states
        if peer != source and not checksums_agree(states[source][0], states[peer][0], rtol)
    )
    return (source, differing) if differing else (None, [])


@dataclass
class _Attempt:
    """One matchmaking + all-reduce: who was in the group and how it ended for us."""

    members: dict[str, Any]  # base58 peer id → its all-gather data (empty: no group)
    completed: bool  # our all-reduce finished (the buffers hold the group's result)
    error: str = ""


class StageGradientAverager:
    """Averages the gradients of ``params`` with the other replicas of the same stage.

    Args:
        dht: a running ``hivemind.DHT`` (see :func:`base.dht.start_dht`).
        prefix: the averaging key, from :func:`averaging_prefix`.
        params: the adapter parameters in a fixed order (:func:`lora.adapter_parameters`);
            their ``.grad`` is read and replaced by :meth:`average`.
        settings: timeouts, group size, compression and defences.
        lora: the adapter's settings; part of the fingerprint replicas must share.
        optimizer: its state is shared with late joiners (and loaded from peers).
        lock: held while gradients, parameters or optimizer state are read or written (the
            training job's lock); a private lock when omitted.
        state_params: returns the tensors compared and shared as the parameters (default:
            ``params``); DiLoCo's outer parameters (:mod:`lora.diloco`).
    """

    def __init__(
        self,
        dht,
        *,
        prefix: str,
        params: Sequence[torch.nn.Parameter],
        settings: AveragingSettings,
        lora: LoraSettings | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        lock: threading.Lock | threading.RLock | None = None,
        state_params=None,
    ):
        if "." in prefix:
            raise ValueError("prefix must not contain '.'")
        self.dht = dht
        self.prefix = prefix
        self.params = list(params)
        self.settings = settings
        self.optimizer = optimizer
        self.state_params = state_params  # () -> the tensors shared as parameters (DiLoCo)
        self.lock = lock or threading.RLock()
        self.step = 0  # optimizer steps applied; set by the caller, shared with late joiners
        self.round_step = 0  # rounds passed: the number partners match on (see set_step)
        self.rounds = 0
        self.fingerprint = sha256_json(
            {
                "lora": lora.fingerprint() if lora is not None else None,
                "tensors": [[list(p.shape), str(p.dtype)] for p in self.params],
                "compression": settings.compression,
                # replicas in another averaging mode never meet at the same steps: refuse them
                **(
                    {"diloco": [settings.local_steps, settings.outer_lr, settings.outer_momentum]}
                    if settings.mode == "diloco"
                    else {}
                ),
            }
        )
        self._checksum = _Checksum()
        # int8 / int4: one flat buffer, so that hivemind's parts are large and their block
        # scales small beside them; otherwise one buffer per parameter
        self._flat = settings.compression in QUANTIZED
        self._diloco = settings.mode == "diloco"
        # DiLoCo: at its first outer step a replica waits (partner_wait, once: until a group
        # forms or a round ends alone) while the run expects partners and none has joined. A
        # trainer that starts later opens its replicas' jobs after ours took local steps; the
        # jobs load our state and its trainer starts at the step our replicas report; waiting
        # keeps that step before our first outer step, so the newcomer's first outer step is
        # ours (else it loads a state this round is about to change, and skips the round). A
        # partner that has joined but is not due (ahead of us, or gone idle) is not waited for.
        self._await_first_partner = self._diloco and settings.target_group_size > 1
        self._buffers = (
            [torch.zeros(sum(p.numel() for p in self.params), dtype=torch.float32)]
            if self._flat
            else [torch.zeros(p.shape, dtype=torch.float32) for p in self.params]
        )
        self.guard = PartGuard(
            max_part_norm=settings.max_part_norm,
            max_peer_weight=settings.max_peer_weight,
            outlier_norm_ratio=settings.outlier_norm_ratio,
        )
        self._control = None
        self._me = secrets.token_hex(8)  # our subkey in the config declaration
        self._joined_at = get_dht_time()
        compression = wire_compression(settings.compression)
        access = security_access.current()  # a private swarm's daemon installed its access
        self._gate = access.averaging_gate() if access is not None else None
        self._declare_config()
        self._check_config_peers()
        # int8 / int4: reducers send the rounded average itself, so every replica ends equal
        # (lora.shared_results); otherwise hivemind's differences
        averager_class = SharedResultAverager if self._flat else GuardedReplicaAverager
        self._averager = averager_class(
            self._buffers,
            dht,
            part_guard=self.guard,
            state_fn=self._current_state,
            start=True,
            prefix=prefix,
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
            gate=self._gate,
        )
        self.peer_id = self._averager.peer_id
        self._peer = self.peer_id.to_base58()
        if self._gate is not None:  # our membership: what the other replicas' gates look up
            self._gate.publish(dht, self._peer)
        self.presence = ReplicaPresence(
            dht, prefix, self._peer, heartbeat=settings.presence_heartbeat
        )

    # -- configuration agreement ---------------------------------------------------------------

    def _declare_config(self) -> None:
        bounded_store(
            self.dht,
            f"{self.prefix}.config",
            [self.fingerprint, self._joined_at],
            expiration_time=get_dht_time() + _CONFIG_TTL,
            subkey=self._me,
        )
        self._declared_at = time.monotonic()

    def _check_config_peers(self) -> None:
        """Refuse if the run's established configuration differs from ours.

        The established configuration is that of the longest-present live replica, so a
        newcomer with another configuration refuses, and never drives the incumbents out.
        """
        found = bounded_get(self.dht, f"{self.prefix}.config", latest=True)
        if found is None or not isinstance(found.value, dict):
            return
        declared = [
            (float(entry.value[1]), str(sub), str(entry.value[0]))
            for sub, entry in found.value.items()
            if isinstance(entry.value, list | tuple) and len(entry.value) == 2
        ]
        declared.append((self._joined_at, self._me, self.fingerprint))
        _, _, established = min(declared)
        if established != self.fingerprint:
            raise AveragingConfigError(
                f"replicas under averaging key {self.prefix!r} use another adapter "
                f"configuration (fingerprint {established[:12]}…, ours "
                f"{self.fingerprint[:12]}…); refusing to average with them",
                hint="use the same LoraSettings, layer range and compression on every replica "
                "of a run, or a different run id",
            )

    def _check_groupmates(self, members: dict[str, Any], local: list[torch.Tensor]) -> None:
        foreign = sorted(
            peer
            for peer, data in members.items()
            if isinstance(data, dict) and data.get("fingerprint") != self.fingerprint
        )
        if foreign:
            self._write_gradients(local)
            raise AveragingConfigError(
                f"groupmates {foreign} averaged under {self.prefix!r} with another adapter "
                "configuration; their round was discarded",
                hint="use the same LoraSettings on every replica of a run",
            )

    # -- one round -----------------------------------------------------------------------------

    @property
    def stage(self) -> AveragingStage:
        """Where the current round is (IDLE when none runs)."""
        control = self._control
        return control.stage if control is not None else AveragingStage.IDLE

    def _read_local_gradients(self) -> list[torch.Tensor]:
        with self.lock:
            grads = [
                p.grad.detach().to("cpu", torch.float32).clone()
                if p.grad is not None
                else torch.zeros(p.shape, dtype=torch.float32)
                for p in self.params
            ]
        return [torch.cat([g.reshape(-1) for g in grads])] if self._flat else grads

    def _write_gradients(self, tensors: Sequence[torch.Tensor]) -> None:
        if self._flat:  # the one flat tensor back into the parameters' shapes
            sizes = [p.numel() for p in self.params]
            tensors = [
                t.reshape(p.shape)
                for t, p in zip(tensors[0].split(sizes), self.params, strict=True)
            ]
        with self.lock:
            for param, tensor in zip(self.params, tensors, strict=True):
                param.grad = tensor.to(param.device, param.dtype).clone()

    def _attempt(self, local: list[torch.Tensor], weight: float, gather: dict) -> _Attempt:
        with self._averager.get_tensors() as buffers:
            for buffer, grad in zip(buffers, local, strict=True):
                buffer.copy_(grad)
        settings = self.settings
        try:
            self._control = self._averager.step(
                gather=gather,
                weight=weight,
                timeout=settings.matchmaking_timeout,
                allow_retries=False,
                wait=False,
            )
            gathered = self._control.result(
                timeout=settings.matchmaking_timeout + settings.allreduce_timeout + 5
            )
        except GroupRoundFailed as exc:  # the group formed, our all-reduce did not finish
            return _Attempt(members=exc.gathered, completed=False, error=str(exc))
        except Exception as exc:  # no group, or the averager process did not answer in time
            if self._control is not None and not self._control.done():
                self._control.cancel()
            return _Attempt(members={}, completed=False, error=f"{type(exc).__name__}: {exc}")
        finally:
            self._control = None
        if not gathered:
            return _Attempt(members={}, completed=False, error="the averager returned no group")
        return _Attempt(
            members={peer.to_base58(): data for peer, data in gathered.items()}, completed=True
        )

    def _exchange_checksums(self, round_id: str, mine: dict, members: set[str]) -> dict[str, dict]:
        """Publish our outcome of the round; read the groupmates' until all are in, one
        disagrees, or ``check_timeout`` passes (we failed: publish only)."""
        key = f"{self.prefix}.check.{round_id}"
        bounded_store(
            self.dht, key, mine, expiration_time=get_dht_time() + _RECORD_TTL, subkey=self._peer
        )
        published: dict[str, dict] = {self._peer: mine}
        if not mine["ok"]:
            return published
        deadline = time.monotonic() + self.settings.check_timeout
        while True:
            found = bounded_get(self.dht, key, latest=True)
            if found is not None and isinstance(found.value, dict):
                for sub, entry in found.value.items():
                    if sub in members and isinstance(entry.value, dict):
                        published[sub] = entry.value
            if (
                set(published) >= members
                or time.monotonic() >= deadline
                or any(not self._matches(mine, other) for other in published.values())
            ):
                return published
            time.sleep(0.1)

    def _matches(self, mine: dict, other: dict) -> bool:
        """Whether a groupmate's published outcome equals ours (ours completed too)."""
        try:
            scales = [max(a, float(b)) for a, b in zip(mine["scale"], other["scale"], strict=True)]
            return bool(other["ok"]) and checksums_agree(
                mine["sum"], other["sum"], self.settings.checksum_rtol, scales
            )
        except (KeyError, TypeError, ValueError):  # malformed: not a matching outcome
            return False

    def average(self, local_samples: float, *, rounds: int | None = None) -> AveragingReport:
        """Replace every param's ``.grad`` by the replicas' weighted mean; see the module doc.

        ``rounds``: the rounds passed before this one, when the caller counts them (DiLoCo:
        the outer step's number - 1, from the trainer's steps); default :attr:`round_step`.

        May also replace the params and optimizer state by a groupmate's (``resynced``) when
        the replicas' states differ at the round's start. Returns within about
        ``matchmaking_timeout`` when no partner is due; at worst after ``partner_wait`` +
        ``attempts x (matchmaking_timeout + allreduce_timeout + check_timeout) +
        resync_timeout``. Never raises for a lost or partial round (only for a configuration
        mismatch, :class:`AveragingConfigError`).
        """
        started = time.monotonic()
        self.rounds += 1
        if rounds is not None and rounds != self.round_step:
            self.round_step = int(rounds)
            self.presence.set_step(self.round_step)
        self.presence.set_looking(True)
        try:
            return self._average(local_samples, started)
        finally:
            self.presence.set_looking(False)

    def note_activity(self) -> None:
        """The trainer fed this replica: partners that find no group wait for it (see
        :mod:`lora.replica_presence`)."""
        self.presence.note_activity()

    def note_idle(self) -> None:
        """The trainer abandoned its step on this replica: partners stop waiting for it."""
        self.presence.note_idle()

    def _partner_due(self, started: float, attempts: int) -> bool:
        """Whether to look for a group again: some partner is still due at our step and the
        round has waited less than ``partner_wait`` seconds."""
        if time.monotonic() - started >= self.settings.partner_wait:
            return False
        due = self.presence.due_partners(self.round_step, self.settings.partner_idle_timeout)
        if not due and self._await_first_partner and not self.presence.partners():
            log.info(
                "averaging round %d attempt %d found no group; no partner has joined the run "
                "yet (%d replicas expected): waiting for one at outer step %d",
                self.rounds,
                attempts,
                self.settings.target_group_size,
                self.round_step + 1,
            )
            return True
        if due:
            log.info(
                "averaging round %d attempt %d found no group; %s still due at %s %d: "
                "looking again",
                self.rounds,
                attempts,
                ", ".join(due),
                "outer step" if self._diloco else "step",
                self.round_step + int(self._diloco),
            )
        return bool(due)

    def _average(self, local_samples: float, started: float) -> AveragingReport:
        if time.monotonic() - self._declared_at > _CONFIG_TTL / 3:
            self._declare_config()
            # with the declaration, not every round (a DHT get): a replica that joined later
            # never outranks us, and every round's groupmates show their fingerprint in the
            # all-gather (_check_groupmates)
            self._check_config_peers()
        if self._gate is not None:
            self._gate.publish(self.dht, self._peer)  # refreshed well before it expires
        local = self._read_local_gradients()
        nonfinite = not all(bool(torch.isfinite(t).all()) for t in local)
        if nonfinite:
            local = [torch.zeros_like(t) for t in local]
            weight = 0.0
        else:
            weight = min(max(float(local_samples), 0.0), self.settings.max_peer_weight)
        local_norms = [float(torch.linalg.vector_norm(t.double())) for t in local]
        call = secrets.token_hex(8)  # names this call: resync confirmations are sent to it
        with self.lock:
            state = self._checksum(self._state_tensors()[0])
        rejected0, clipped0 = self.guard.rejected, self.guard.clipped
        attempts, partial, errors = 0, False, []
        reruns = 0  # reruns after a partial attempt (looking again for a group is not one)
        result, averaged, consistent, group_size, agreeing, missing = local, False, True, 1, 1, 0
        basis: dict[str, Any] = {}  # the all-gather of the last group we were in
        excluded: list[tuple[str, str]] = []  # groupmates whose parts our reducer left out
        self.guard.drain_excluded()  # anything left from an earlier call is not this round's
        while True:
            attempts += 1
            if self._diloco:  # only replicas at this outer step meet (hivemind's group key);
                # set before every attempt: hivemind moves the bits when a group assembles
                self._averager.set_group_bits(round_bits(self.round_step))
            attempt = self._attempt(
                local,
                weight,
                {
                    "nonce": secrets.token_hex(16),
                    "fingerprint": self.fingerprint,
                    "call": call,
                    "state": pack_checksum(state),
                    "step": self.step,
                },
            )
            if attempt.error:
                errors.append(attempt.error)
                log.info("averaging round %d attempt %d: %s", self.rounds, attempts, attempt.error)
            if not attempt.members and self._partner_due(started, attempts):
                continue  # a partner at this step is alive and on its way: look again
            if not attempt.members:  # no group: alone, or the others are gone
                self._await_first_partner = False
                # after a failed group the others may hold something else: say so
                result, averaged, consistent, group_size, agreeing, missing = (
                    local,
                    False,
                    not basis,
                    1,
                    1,
                    0,
                )
                break
            self._check_groupmates(attempt.members, local)
            self._await_first_partner = False
            basis = attempt.members
            group_size = len(basis)
            nonces = sorted(str(d.get("nonce")) for d in basis.values() if isinstance(d, dict))
            round_id = hashlib.sha256("|".join(nonces).encode()).hexdigest()[:24]
            if attempt.completed:
                with self._averager.get_tensors() as buffers:
                    result = [buffer.clone() for buffer in buffers]
            else:
                result = local
            mine = {"sum": self._checksum(result), "scale": local_norms, "ok": attempt.completed}
            published = self._exchange_checksums(round_id, mine, set(basis))
            # a groupmate whose parts we left out (allreduce_guard: non-finite, or far outside
            # the group's norms) holds what its own poisoned input left it: not a disagreement
            dropped = self.guard.drain_excluded()
            excluded.extend(dropped)
            left_out = {peer for peer, _ in dropped} & set(basis)
            published = {p: o for p, o in published.items() if p not in left_out}
            agreeing = sum(self._matches(mine, other) for other in published.values())
            missing = group_size - len(left_out) - len(published)
            if attempt.completed and agreeing == len(published):
                averaged, consistent = True, True
                if missing:
                    log.warning(
                        "averaging round %d: %d groupmate(s) never confirmed (died "
                        "mid-round?); the %d survivor(s) agree",
                        self.rounds,
                        missing,
                        agreeing,
                    )
                break
            partial = True
            log.warning(
                "averaging round %d attempt %d was partial: %s; %d of %d published "
                "outcomes differ from ours",
                self.rounds,
                attempts,
                "our all-reduce failed" if not attempt.completed else "it completed",
                len(published) - agreeing,
                len(published),
            )
            reruns += 1
            if reruns > self.settings.max_retries:
                result, averaged, consistent = local, False, False
                break
        diverged, resynced, resync_ok = self._reconcile_states(basis, call)
        self._write_gradients(result)
        return AveragingReport(
            round=self.rounds,
            averaged=averaged,
            consistent=consistent and resync_ok,
            group_size=group_size,
            agreeing=agreeing,
            missing=missing,
            partial_detected=partial or missing > 0,
            attempts=attempts,
            weight=weight,
            local_nonfinite=nonfinite,
            rejected_parts=self.guard.rejected - rejected0,
            excluded=tuple(excluded + self.guard.drain_excluded()),
            clipped_parts=self.guard.clipped - clipped0,
            seconds=time.monotonic() - started,
            error="; ".join(errors),
            diverged=diverged,
            resynced=resynced,
        )

    # -- replicas whose states differ ----------------------------------------------------------

    def _reconcile_states(self, members: dict[str, Any], call: str) -> tuple[int, bool, bool]:
        """Make the group's states equal again; returns (differing, we loaded, all went well)."""
        states: dict[str, tuple[list[float], int, str]] = {}
        for peer, data in members.items():
            try:
                states[peer] = (
                    unpack_checksum(data["state"]),
                    int(data["step"]),
                    str(data["call"]),
                )
            except (KeyError, TypeError, ValueError):  # a malformed all-gather: leave it out
                continue
        source, differing = resync_plan(
            {peer: (s[0], s[1]) for peer, s in states.items()}, self.settings.state_checksum_rtol
        )
        if source is None:
            return 0, False, True
        log.warning(
            "averaging round %d: the states of %d of %d groupmates differ from %s's "
            "(step %d): they copy it",
            self.rounds,
            len(differing),
            len(states),
            source,
            states[source][1],
        )
        if source == self._peer:
            return len(differing), False, self._await_resyncs(call, set(differing))
        if self._peer not in differing:
            return len(differing), False, True
        loaded = self._resync_from(source, states[source][0])
        bounded_store(
            self.dht,
            f"{self.prefix}.resync.{states[source][2]}",
            loaded,
            expiration_time=get_dht_time() + _RECORD_TTL,
            subkey=self._peer,
        )
        return len(differing), loaded, loaded

    def _await_resyncs(self, call: str, differing: set[str]) -> bool:
        """As the source: stay (state unchanged) until the differing members have loaded it."""
        key = f"{self.prefix}.resync.{call}"
        deadline = time.monotonic() + self.settings.resync_timeout + 5
        confirmed: dict[str, bool] = {}
        while set(confirmed) < differing and time.monotonic() < deadline:
            time.sleep(0.2)
            found = bounded_get(self.dht, key, latest=True)
            if found is not None and isinstance(found.value, dict):
                confirmed.update(
                    {
                        sub: bool(entry.value)
                        for sub, entry in found.value.items()
                        if sub in differing
                    }
                )
        if set(confirmed) < differing or not all(confirmed.values()):
            log.warning(
                "averaging round %d: %d of %d differing groupmates did not load our state",
                self.rounds,
                len(differing) - sum(confirmed.values()),
                len(differing),
            )
            return False
        return True

    def _resync_from(self, source: str, expected: list[float]) -> bool:
        try:
            metadata, tensors = self._averager.download_state_from(
                source, timeout=self.settings.resync_timeout
            )
        except Exception as exc:
            log.warning("averaging round %d: cannot copy %s's state: %s", self.rounds, source, exc)
            return False
        if not isinstance(metadata, dict) or metadata.get("fingerprint") != self.fingerprint:
            log.warning(
                "averaging round %d: %s's state has another fingerprint", self.rounds, source
            )
            return False
        if not checksums_agree(
            self._checksum(tensors), expected, self.settings.state_checksum_rtol
        ):
            log.warning(
                "averaging round %d: %s's state changed since the round started; not loaded",
                self.rounds,
                source,
            )
            return False
        self._apply_state(metadata, tensors)
        log.warning(
            "averaging round %d: loaded %s's state (step %d)", self.rounds, source, self.step
        )
        return True

    # -- state for late joiners and resyncs ----------------------------------------------------

    def set_step(self, step: int, *, rounds: int | None = None) -> None:
        """Record the optimizer steps applied (peers download from the most advanced replica)
        and the rounds passed, the number partners match on: ``step`` itself per step;
        DiLoCo's outer steps passed (``rounds``: the trainer's steps // K; default
        ``step // local_steps``), so a replica in its local steps is due at the next outer
        step for a partner already there."""
        self.step = int(step)
        if rounds is None:
            rounds = self.step // self.settings.local_steps if self._diloco else self.step
        self.round_step = int(rounds)
        self._averager.state_sharing_priority = float(step)
        self.presence.set_step(self.round_step)

    def _state_tensors(self) -> tuple[list[torch.Tensor], list, dict]:
        """The live tensors shared with peers (params, then optimizer tensors); hold the lock."""
        shared = self.state_params() if self.state_params is not None else self.params
        tensors = [p.detach() for p in shared]
        layout, opt_scalars = [], {}
        if self.optimizer is not None:
            state = self.optimizer.state_dict()["state"]
            for index in sorted(state):
                for key in sorted(state[index]):
                    value = state[index][key]
                    if isinstance(value, torch.Tensor):
                        layout.append([index, key])
                        tensors.append(value.detach())
                    else:
                        opt_scalars[f"{index}/{key}"] = value
        return tensors, layout, opt_scalars

    def _current_state(self):
        with self.lock:
            tensors, layout, opt_scalars = self._state_tensors()
            tensors = [  # on the host: hivemind sends CPU tensors
                t.to("cpu", torch.float32).clone() if i < len(self.params) else t.cpu().clone()
                for i, t in enumerate(tensors)
            ]
        metadata = {
            "fingerprint": self.fingerprint,
            "step": self.step,
            "layout": layout,
            "scalars": opt_scalars,
            "n_params": len(self.params),
        }
        return metadata, tensors

    def _apply_state(self, metadata: dict, tensors: Sequence[torch.Tensor]) -> None:
        n = int(metadata["n_params"])
        if n != len(self.params) or any(
            tuple(t.shape) != tuple(p.shape) for t, p in zip(tensors[:n], self.params, strict=True)
        ):
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
                self.optimizer.load_state_dict(
                    {"state": state, "param_groups": current["param_groups"]}
                )
        self.set_step(int(metadata["step"]))

    def load_state_from_peers(self, timeout: float = 30.0) -> LoadedState | None:
        """Copy adapter tensors, optimizer state and step from a peer; None if nobody answers."""
        loaded = self._averager.load_state_from_peers(timeout=timeout)
        if loaded is None:
            return None
        metadata, tensors = loaded
        if metadata.get("fingerprint") != self.fingerprint:
            raise AveragingConfigError(
                f"the peer's state under {self.prefix!r} was made with another adapter "
                "configuration; not loaded"
            )
        self._apply_state(metadata, tensors)
        return LoadedState(step=self.step, source_fingerprint=metadata["fingerprint"])

    def shutdown(self) -> None:
        self.presence.stop()
        self._averager.shutdown()
