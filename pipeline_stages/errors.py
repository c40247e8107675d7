"""Errors a stage raises for a request it refuses; each maps to one gRPC status code."""

from __future__ import annotations


class StageRequestError(Exception):
    """Base class; ``status`` is the name of a ``grpc.StatusCode`` member."""

    status = "INVALID_ARGUMENT"


class InvalidInput(StageRequestError):
    status = "INVALID_ARGUMENT"


class SessionNotFound(StageRequestError):
    status = "NOT_FOUND"


class CapacityExceeded(StageRequestError):
    status = "RESOURCE_EXHAUSTED"


class PositionMismatch(StageRequestError):
    status = "FAILED_PRECONDITION"


class ContextOverflow(StageRequestError):
    status = "OUT_OF_RANGE"
