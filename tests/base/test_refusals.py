"""The refusal codec: a reason set by a handler crosses real gRPC (sync and aio clients) in the
trailing metadata, is read back from the error or from a node0 error raised from it, and every
reason has one meaning (status, error family, whether another replica may serve)."""

from __future__ import annotations

import asyncio
import re
import socket
from concurrent import futures
from contextlib import contextmanager

import grpc
import pytest

from base.errors import ExitCode, Node0Error, PeerFailureError, RequestError
from base.refusals import (
    METADATA_KEY,
    REFUSALS,
    Reason,
    abort,
    call_failure,
    reason_of,
)
from tests.fixtures import REPO

METHOD = "/test.Refuser/Refuse"


def _refuse(request: bytes, context):
    """Refuses with the reason named by the request (b"" : a reason-less abort)."""
    value = request.decode()
    if value.startswith("raw:"):  # a code this client does not know
        context.set_trailing_metadata(((METADATA_KEY, value[4:]),))
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "from a newer daemon")
    if not value:
        context.abort(grpc.StatusCode.UNAVAILABLE, "no reason given")
    abort(context, Reason(value), f"refused: {value}")


@contextmanager
def _server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.unary_unary_rpc_method_handler(_refuse)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Refuser", {"Refuse": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


@pytest.fixture(scope="module")
def endpoint():
    with _server() as address:
        yield address


def _call(endpoint: str, payload: str) -> grpc.RpcError:
    with grpc.insecure_channel(endpoint) as channel:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary(METHOD)(payload.encode(), timeout=10)
    return info.value


@pytest.mark.parametrize("reason", list(Reason))
def test_every_reason_crosses_the_wire_with_its_status(endpoint, reason):
    error = _call(endpoint, reason.value)
    assert reason_of(error) is reason
    assert error.code() == reason.status
    failure = call_failure(error)
    assert (failure.reason, failure.family, failure.elsewhere) == (
        reason,
        reason.family,
        reason.elsewhere,
    )


def test_aio_clients_read_the_same_reason(endpoint):
    async def call() -> grpc.aio.AioRpcError:
        async with grpc.aio.insecure_channel(endpoint) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await channel.unary_unary(METHOD)(b"lease_busy", timeout=10)
        return info.value

    error = asyncio.run(call())
    assert reason_of(error) is Reason.LEASE_BUSY
    assert call_failure(error).family.exit_code == ExitCode.SWARM


def test_the_reason_survives_raise_from():
    """A client error raised ``from`` the call's error still says why."""
    with _server() as address:
        error = _call(address, "adapter_conflict")
    try:
        try:
            raise error
        except grpc.RpcError as exc:
            raise call_failure(exc).family("a stage refused the job") from exc
    except Node0Error as raised:
        assert reason_of(raised) is Reason.ADAPTER_CONFLICT
        assert raised.exit_code == ExitCode.CONFIG
    assert reason_of(RequestError("not from a call")) is None


def test_reasonless_failures_sort_by_status(endpoint):
    aborted = call_failure(_call(endpoint, ""))  # a handler that gave no reason
    assert aborted.reason is None and aborted.elsewhere and aborted.family is PeerFailureError
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: the peer is gone
        gone = call_failure(_call(f"127.0.0.1:{port}", "lease_busy"))
    assert gone.reason is None and gone.code == grpc.StatusCode.UNAVAILABLE
    assert gone.family.exit_code == ExitCode.PEER_FAILURE and gone.elsewhere
    newer = call_failure(_call(endpoint, "raw:some_future_reason"))
    assert newer.reason is None and newer.family is RequestError and not newer.elsewhere


def test_each_reason_has_one_meaning():
    assert set(REFUSALS) == set(Reason)
    assert all(isinstance(r.family.exit_code, ExitCode) for r in Reason)
    by_family = {r.value: int(r.family.exit_code) for r in Reason}
    # the cases docs/training.md and the README name
    assert by_family["adapter_conflict"] == 3 and by_family["lease_busy"] == 5
    assert by_family["unknown_adapter"] == 6 and by_family["prompt_too_long"] == 6
    assert by_family["session_not_found"] == 7


def test_the_readme_exit_code_table_names_every_reason_under_its_code():
    """The README's exit-code table is the one users read: each reason in its row's code."""
    text = (REPO / "README.md").read_text()
    table = text.split("## Exit codes", 1)[1].split("\n\n", 2)[1]
    listed = {}
    for row in table.splitlines():
        cells = [c.strip() for c in row.strip("|").split("|")]
        if cells[0].isdigit():
            for name in re.findall(r"`([a-z_]+)`", cells[2]):
                if name in {r.value for r in Reason}:
                    listed[Reason(name)] = int(cells[0])
    assert listed == {r: int(r.family.exit_code) for r in Reason}
