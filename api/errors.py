"""Errors in OpenAI's JSON shape, and how node0's errors map onto HTTP statuses.

Every error body is ``{"error": {"message", "type", "param", "code"}}``. The ``code`` of an
error from the swarm is the daemon's refusal :class:`~base.refusals.Reason` when one travelled
with it, else a name for its error class: never anything read from the message text.
"""

from __future__ import annotations

from dataclasses import dataclass

from base.errors import (
    CheckpointError,
    ConfigError,
    ExitCode,
    Node0Error,
    PeerFailureError,
    RequestError,
    SwarmError,
)
from base.refusals import Reason, reason_of, retry_after_of


class UnsafeBindError(Node0Error):
    """``--host`` is not a loopback address and no API key protects the server."""

    exit_code = ExitCode.UNSAFE_BIND


@dataclass
class APIError(Exception):
    """An HTTP error answer in OpenAI's shape."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    retry_after: float | None = None

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after)))}


def bad_parameter(param: str, message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, code=code, param=param)


# status, type and code of an error family without a reason from a daemon
_FAMILIES: list[tuple[type[Node0Error], int, str, str]] = [
    (RequestError, 400, "invalid_request_error", "invalid_request"),
    (SwarmError, 503, "service_unavailable", "no_route"),
    (PeerFailureError, 503, "service_unavailable", "peer_failure"),
    (ConfigError, 500, "server_error", "config_error"),
    (CheckpointError, 500, "server_error", "checkpoint_error"),
]

# reasons whose HTTP status is not the one their family gives
_REASON_STATUS: dict[Reason, tuple[int, str]] = {
    Reason.UNKNOWN_ADAPTER: (404, "invalid_request_error"),
    Reason.PROMPT_TOO_LONG: (400, "invalid_request_error"),
    Reason.SESSION_CAPACITY: (503, "service_unavailable"),
}


def from_node0(exc: Node0Error) -> APIError:
    """The HTTP answer for a failure of the engine or the swarm."""
    status, kind, code = 500, "server_error", "internal_error"
    for family, family_status, family_kind, family_code in _FAMILIES:
        if isinstance(exc, family):
            status, kind, code = family_status, family_kind, family_code
            break
    reason = reason_of(exc)
    if reason is not None:
        code = reason.value
        if reason in _REASON_STATUS:
            status, kind = _REASON_STATUS[reason]
    if code == Reason.PROMPT_TOO_LONG.value:
        code = "context_length_exceeded"
    return APIError(status, str(exc), type=kind, code=code, retry_after=retry_after_of(exc))
