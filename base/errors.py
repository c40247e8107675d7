"""The project's error families and their process exit codes.

Every user-facing failure is raised as a subclass of :class:`Node0Error`; the CLI turns it into
one clear line on stderr and the family's exit code (documented in the README). Codes are
distinct per family so scripts and agents can react without parsing text.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes, one per failure family."""

    OK = 0
    USAGE = 2  # bad command line (argparse uses 2 as well)
    CONFIG = 3  # malformed or invalid config file
    CHECKPOINT = 4  # missing, corrupt or contradictory checkpoint / model assets
    SWARM = 5  # no reachable peer, missing stage, route cannot be built
    REQUEST = 6  # a request the model cannot serve (prompt too long, unknown adapter, …)
    PEER_FAILURE = 7  # a peer failed mid-operation and no replica could take over
    DATA = 8  # malformed input data (corpus, dataset) beyond what quarantine absorbs
    QUALITY_GATE = 9  # a quality / eval gate refused the result
    RUN_DIR = 10  # a run directory already exists or cannot be written
    DEVICE = 11  # the device asked for is absent, too small, or cannot run the dtype asked for
    UNSAFE_BIND = 12  # a server asked to listen beyond loopback with no API key to guard it
    AUTH = 13  # no, a bad, an expired or a revoked swarm credential, or a role that forbids it
    INTERRUPTED = 130  # SIGINT


class Node0Error(Exception):
    """Base class: a failure with a message meant for the user and an exit code."""

    exit_code: ExitCode = ExitCode.USAGE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base}\n  hint: {self.hint}" if self.hint else base


class ConfigError(Node0Error):
    exit_code = ExitCode.CONFIG


class CheckpointError(Node0Error):
    exit_code = ExitCode.CHECKPOINT


class SwarmError(Node0Error):
    exit_code = ExitCode.SWARM


class RequestError(Node0Error):
    exit_code = ExitCode.REQUEST


class PeerFailureError(Node0Error):
    exit_code = ExitCode.PEER_FAILURE


class DataError(Node0Error):
    exit_code = ExitCode.DATA


class QualityGateError(Node0Error):
    exit_code = ExitCode.QUALITY_GATE


class RunDirError(Node0Error):
    exit_code = ExitCode.RUN_DIR


class DeviceError(Node0Error):
    exit_code = ExitCode.DEVICE


class AuthError(Node0Error):
    exit_code = ExitCode.AUTH
