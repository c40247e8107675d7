"""Errors a stage raises for a call it refuses: one class per :class:`base.refusals.Reason`.

The reason decides the gRPC status and what a client does (:data:`base.refusals.REFUSALS`);
:func:`abort_call` is how every handler of the daemon (``node.stage_service``,
``checkpoint_gather.weights_service``) turns what it caught into that refusal.
"""

from __future__ import annotations

import logging
from typing import NoReturn

from base.refusals import Reason, abort
from proto.tensor_codec import TensorFormatError

log = logging.getLogger(__name__)


class StageRequestError(Exception):
    """Base class: a refusal with a message for people and a :class:`Reason` for programs."""

    reason: Reason = Reason.INVALID_REQUEST

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after  # seconds after which the same call may succeed

    @property
    def status(self) -> str:
        """The name of the ``grpc.StatusCode`` the refusal travels with."""
        return self.reason.status.name


class InvalidInput(StageRequestError):
    reason = Reason.INVALID_REQUEST


class WrongModel(StageRequestError):
    reason = Reason.WRONG_MODEL


class DTypeMismatch(StageRequestError):
    reason = Reason.DTYPE_MISMATCH


class UnknownAdapter(StageRequestError):
    reason = Reason.UNKNOWN_ADAPTER


class PromptTooLong(StageRequestError):
    reason = Reason.PROMPT_TOO_LONG


class ContextOverflow(StageRequestError):
    reason = Reason.PAST_MAX_LENGTH


class PositionAhead(StageRequestError):
    """A step whose position skips past the session's cache."""

    reason = Reason.POSITION_AHEAD


class NothingToStep(StageRequestError):
    """An optimizer step without a gradient accumulated since the last one."""

    reason = Reason.NOTHING_TO_STEP


class TooManyPending(StageRequestError):
    reason = Reason.TOO_MANY_PENDING


class BadJobSettings(StageRequestError):
    reason = Reason.BAD_JOB_SETTINGS


class AdapterConflict(StageRequestError):
    """The adapter name is taken on this stage by an adapter with other LoRA settings."""

    reason = Reason.ADAPTER_CONFLICT


class JobSettingsConflict(StageRequestError):
    reason = Reason.JOB_SETTINGS_CONFLICT


class ReplicaConfigMismatch(StageRequestError):
    reason = Reason.REPLICA_CONFIG_MISMATCH


class LeaseBusy(StageRequestError):
    """The job on this replica belongs to another trainer while its lease holds."""

    reason = Reason.LEASE_BUSY


class SpanNotHosted(StageRequestError):
    reason = Reason.SPAN_NOT_HOSTED


class CapacityExceeded(StageRequestError):
    """The daemon is at its session or cache-token limit."""

    reason = Reason.SESSION_CAPACITY


class NoAveraging(StageRequestError):
    reason = Reason.NO_AVERAGING


class SessionNotFound(StageRequestError):
    reason = Reason.SESSION_NOT_FOUND


class JobNotFound(StageRequestError):
    reason = Reason.JOB_NOT_FOUND


class MicrobatchNotFound(StageRequestError):
    reason = Reason.MICROBATCH_NOT_FOUND


def abort_call(context, exc: BaseException, what: str = "call") -> NoReturn:
    """Refuse the call for ``exc``: its own reason, a malformed tensor, or (logged) internal."""
    if isinstance(exc, StageRequestError):
        abort(context, exc.reason, str(exc), retry_after=exc.retry_after)
    if isinstance(exc, TensorFormatError):
        abort(context, Reason.INVALID_REQUEST, f"malformed tensor: {exc}")
    log.exception("%s failed", what)
    abort(context, Reason.INTERNAL, f"internal error: {exc}")
