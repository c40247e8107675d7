"""Why a daemon refused a call, as a code that crosses the wire.

Every refusal a daemon sends carries one :class:`Reason` in the gRPC trailing metadata (key
:data:`METADATA_KEY`), set by :func:`abort`, the one helper every handler refuses through.
Clients read it back with :func:`reason_of` (or :func:`call_failure`) and branch on it, never
on the message text. :data:`REFUSALS` says, once per reason, the gRPC status it travels with,
the error family a client raises for it (so its exit code, :mod:`base.errors`) and whether
another replica may serve the same call (``elsewhere``: the trainer reroutes, the gatherer and
the inference client try the next replica).

A failed call without a reason did not come from a handler: the peer is gone, timed out, or
gRPC itself refused (a message over the size limit). :func:`call_failure` sorts those by status
code alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NoReturn

import grpc

from base.errors import (
    AuthError,
    ConfigError,
    Node0Error,
    PeerFailureError,
    RequestError,
    SwarmError,
)

METADATA_KEY = "node0-reason"
RETRY_AFTER_KEY = "node0-retry-after-s"  # on a refusal for a full daemon: when to try again


class Reason(StrEnum):
    """A refusal's code on the wire (the value is what travels)."""

    # the request itself is wrong: another replica would refuse it too
    INVALID_REQUEST = "invalid_request"
    """Malformed tensor, shape or dtype, bad sampling values, a call without its header."""
    WRONG_MODEL = "wrong_model"
    """The daemon serves another base model than the one the caller names."""
    UNKNOWN_ADAPTER = "unknown_adapter"
    """A session or pull names an adapter this stage does not hold."""
    PROMPT_TOO_LONG = "prompt_too_long"
    """A session asks for more positions than the model's context window."""
    PAST_MAX_LENGTH = "past_max_length"
    """A step would go past the positions its session reserved."""
    POSITION_AHEAD = "position_ahead"
    """A step starts beyond the session's cache (positions would be skipped)."""
    NOTHING_TO_STEP = "nothing_to_step"
    """An optimizer step with no gradient accumulated since the last one."""
    TOO_MANY_PENDING = "too_many_pending"
    """Too many training forwards await their backward on this job."""
    PROBE_TOO_LARGE = "probe_too_large"
    """A network probe sends or asks back more bytes than the daemon's cap
    (node/net_probe.py)."""
    # the job's settings contradict the stage's: a config to fix
    BAD_JOB_SETTINGS = "bad_job_settings"
    """The training job's LoRA, averaging or optimizer settings do not validate."""
    ADAPTER_CONFLICT = "adapter_conflict"
    """The stage holds the adapter under this name with other LoRA settings."""
    JOB_SETTINGS_CONFLICT = "job_settings_conflict"
    """The job is open on the stage with other settings (another trainer of the run)."""
    REPLICA_CONFIG_MISMATCH = "replica_config_mismatch"
    """The stage's replicas average this adapter with another configuration."""
    # this replica cannot take the call now; another one may
    LEASE_BUSY = "lease_busy"
    """The replica trains this job for another trainer (its lease holds)."""
    SPAN_NOT_HOSTED = "span_not_hosted"
    """The daemon does not host the layer range asked for (a stale route)."""
    DTYPE_MISMATCH = "dtype_mismatch"
    """Activations in a dtype the stage converts only with a loss it was not told is safe."""
    SESSION_CAPACITY = "session_capacity"
    """The daemon is at its session or cache-token limit."""
    NO_AVERAGING = "no_averaging"
    """The job expects replicas but this daemon has no DHT to average with."""
    PROBE_BUSY = "probe_busy"
    """The daemon is answering another network probe (one at a time); retry after a while."""
    # the replica lost state the call needs, or failed: redo it on another replica
    SESSION_NOT_FOUND = "session_not_found"
    """The inference session was closed, evicted, or the daemon restarted."""
    JOB_NOT_FOUND = "job_not_found"
    """No such training job on the stage (the daemon restarted)."""
    MICROBATCH_NOT_FOUND = "microbatch_not_found"
    """A backward for a micro-batch whose forward the stage does not hold."""
    INTERNAL = "internal"
    """The handler failed unexpectedly (logged on the daemon)."""
    # the swarm's access control (security/): the caller, not the request, is refused
    NO_CREDENTIAL = "no_credential"
    """The call carries no swarm credential (an outsider, or a client without one)."""
    BAD_CREDENTIAL = "bad_credential"
    """The credential or its proof does not verify: forged, altered, or another swarm's."""
    CREDENTIAL_EXPIRED = "credential_expired"
    """The credential's expiry has passed."""
    CREDENTIAL_REVOKED = "credential_revoked"
    """The swarm authority revoked the credential."""
    ROLE_FORBIDS = "role_forbids"
    """The credential is valid but its role may not make this call (security/roles.py)."""

    @property
    def status(self) -> grpc.StatusCode:
        return REFUSALS[self].status

    @property
    def family(self) -> type[Node0Error]:
        return REFUSALS[self].family

    @property
    def elsewhere(self) -> bool:
        return REFUSALS[self].elsewhere


@dataclass(frozen=True)
class Refusal:
    """What one reason means: its status on the wire, the client's error family, and whether
    another replica may serve the same call."""

    status: grpc.StatusCode
    family: type[Node0Error]
    elsewhere: bool = False


_S = grpc.StatusCode
REFUSALS: dict[Reason, Refusal] = {
    Reason.INVALID_REQUEST: Refusal(_S.INVALID_ARGUMENT, RequestError),
    Reason.WRONG_MODEL: Refusal(_S.INVALID_ARGUMENT, RequestError),
    Reason.UNKNOWN_ADAPTER: Refusal(_S.NOT_FOUND, RequestError, elsewhere=True),
    Reason.PROMPT_TOO_LONG: Refusal(_S.INVALID_ARGUMENT, RequestError),
    Reason.PAST_MAX_LENGTH: Refusal(_S.OUT_OF_RANGE, RequestError),
    Reason.POSITION_AHEAD: Refusal(_S.FAILED_PRECONDITION, RequestError),
    Reason.NOTHING_TO_STEP: Refusal(_S.FAILED_PRECONDITION, RequestError),
    Reason.TOO_MANY_PENDING: Refusal(_S.RESOURCE_EXHAUSTED, RequestError),
    Reason.PROBE_TOO_LARGE: Refusal(_S.RESOURCE_EXHAUSTED, RequestError),
    Reason.BAD_JOB_SETTINGS: Refusal(_S.INVALID_ARGUMENT, ConfigError),
    Reason.ADAPTER_CONFLICT: Refusal(_S.FAILED_PRECONDITION, ConfigError),
    Reason.JOB_SETTINGS_CONFLICT: Refusal(_S.FAILED_PRECONDITION, ConfigError),
    Reason.REPLICA_CONFIG_MISMATCH: Refusal(_S.FAILED_PRECONDITION, ConfigError),
    Reason.LEASE_BUSY: Refusal(_S.FAILED_PRECONDITION, SwarmError, elsewhere=True),
    Reason.SPAN_NOT_HOSTED: Refusal(_S.NOT_FOUND, SwarmError, elsewhere=True),
    Reason.DTYPE_MISMATCH: Refusal(_S.FAILED_PRECONDITION, SwarmError, elsewhere=True),
    Reason.SESSION_CAPACITY: Refusal(_S.RESOURCE_EXHAUSTED, SwarmError, elsewhere=True),
    Reason.NO_AVERAGING: Refusal(_S.FAILED_PRECONDITION, SwarmError, elsewhere=True),
    Reason.PROBE_BUSY: Refusal(_S.RESOURCE_EXHAUSTED, SwarmError, elsewhere=True),
    Reason.SESSION_NOT_FOUND: Refusal(_S.NOT_FOUND, PeerFailureError, elsewhere=True),
    Reason.JOB_NOT_FOUND: Refusal(_S.NOT_FOUND, PeerFailureError, elsewhere=True),
    Reason.MICROBATCH_NOT_FOUND: Refusal(_S.NOT_FOUND, PeerFailureError, elsewhere=True),
    Reason.INTERNAL: Refusal(_S.INTERNAL, PeerFailureError, elsewhere=True),
    Reason.NO_CREDENTIAL: Refusal(_S.UNAUTHENTICATED, AuthError),
    Reason.BAD_CREDENTIAL: Refusal(_S.UNAUTHENTICATED, AuthError),
    Reason.CREDENTIAL_EXPIRED: Refusal(_S.UNAUTHENTICATED, AuthError),
    Reason.CREDENTIAL_REVOKED: Refusal(_S.UNAUTHENTICATED, AuthError),
    Reason.ROLE_FORBIDS: Refusal(_S.PERMISSION_DENIED, AuthError),
}

TRANSPORT_FAILURES = frozenset(
    {_S.UNAVAILABLE, _S.DEADLINE_EXCEEDED, _S.CANCELLED, _S.ABORTED, _S.INTERNAL, _S.UNKNOWN}
)
"""Statuses of a reason-less failure that mean the peer is gone or broke (another may serve);
any other reason-less status is gRPC refusing the request itself (e.g. a message too large)."""


def abort(
    context: grpc.ServicerContext, reason: Reason, message: str, *, retry_after: float | None = None
) -> NoReturn:
    """End the call with ``reason``'s status, ``message``, and the reason in the trailers
    (with ``retry_after``: also when, in seconds, the same call may succeed)."""
    trailers = [(METADATA_KEY, reason.value)]
    if retry_after is not None:
        trailers.append((RETRY_AFTER_KEY, f"{retry_after:.3f}"))
    context.set_trailing_metadata(tuple(trailers))
    context.abort(reason.status, message)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def _rpc_error(exc: BaseException | None) -> BaseException | None:
    """``exc`` or the first error of its ``raise … from`` chain that is a failed call."""
    seen = 0
    while exc is not None and seen < 16:
        if callable(getattr(exc, "trailing_metadata", None)) and callable(
            getattr(exc, "code", None)
        ):
            return exc
        exc, seen = exc.__cause__, seen + 1
    return None


def reason_of(exc: BaseException | None) -> Reason | None:
    """The reason a daemon gave for a failed call (None: the failure did not come from a
    handler, or the code is not one this client knows).

    ``exc`` is the ``grpc.RpcError`` / ``grpc.aio.AioRpcError``, or an error raised from one
    (``raise RequestError(…) from rpc_error``): the ``__cause__`` chain is followed.
    """
    error = _rpc_error(exc)
    if error is None:
        return None
    try:
        trailers = error.trailing_metadata() or ()
    except Exception:  # a call that never started has no trailers to read
        return None
    for key, value in trailers:
        if key == METADATA_KEY:
            try:
                return Reason(value)
            except ValueError:
                return None
    return None


def retry_after_of(exc: BaseException | None) -> float | None:
    """Seconds after which the refused call may succeed, when the daemon said so."""
    error = _rpc_error(exc)
    if error is None:
        return None
    try:
        trailers = error.trailing_metadata() or ()
    except Exception:
        return None
    for key, value in trailers:
        if key == RETRY_AFTER_KEY:
            try:
                return float(value)
            except ValueError:
                return None
    return None


@dataclass(frozen=True)
class CallFailure:
    """A failed call as a client sees it: the reason (if a handler refused), the status and
    the peer's message (for people: never branch on it)."""

    reason: Reason | None
    code: grpc.StatusCode
    details: str

    @property
    def family(self) -> type[Node0Error]:
        if self.reason is not None:
            return self.reason.family
        return PeerFailureError if self.code in TRANSPORT_FAILURES else RequestError

    @property
    def elsewhere(self) -> bool:
        """Another replica may serve the same call (reroute, fail over, try the next)."""
        if self.reason is not None:
            return self.reason.elsewhere
        return self.code in TRANSPORT_FAILURES

    def __str__(self) -> str:
        return f"{self.reason or self.code.name}: {self.details}"


def call_failure(exc: BaseException) -> CallFailure:
    """Sort a failed call (or an error raised from one) by its reason, else by its status."""
    error = _rpc_error(exc)
    if error is None:
        return CallFailure(None, _S.UNKNOWN, str(exc))
    try:
        code, details = error.code(), error.details() or ""
    except Exception:
        code, details = _S.UNKNOWN, str(error)
    return CallFailure(reason_of(error), code or _S.UNKNOWN, details)
