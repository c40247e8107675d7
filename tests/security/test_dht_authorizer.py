"""The DHT authorizer's message checks, between two authorizers in one process (no network):
a request key not delegated by the credential's key, an altered message, a replay and a store by
a non-host are refused."""

from __future__ import annotations

import asyncio

import pytest
from hivemind.proto import dht_pb2
from hivemind.proto.auth_pb2 import AccessToken

from security.authority import SwarmAuthority
from security.dht_authorizer import SwarmAuthorizer


@pytest.fixture(scope="module")
def authority(tmp_path_factory) -> SwarmAuthority:
    return SwarmAuthority.init(tmp_path_factory.mktemp("authority") / "a")


def _signed_request(client: SwarmAuthorizer, request=None):
    request = request or dht_pb2.FindRequest(keys=[b"k" * 20])
    asyncio.run(client.sign_request(request, None))
    return request


def test_a_signed_request_and_response_pass(authority):
    a, b = (
        SwarmAuthorizer(authority.invite("a", "host")),
        SwarmAuthorizer(authority.invite("b", "host")),
    )
    request = _signed_request(a)
    assert asyncio.run(b.validate_request(request))
    response = dht_pb2.FindResponse()
    asyncio.run(b.sign_response(response, request))
    assert asyncio.run(a.validate_response(response, request))
    assert not asyncio.run(b.validate_request(request)), "a replayed request"


def test_altered_undelegated_and_unprivileged_messages_are_refused(authority):
    a = SwarmAuthorizer(authority.invite("a", "host"))
    b = SwarmAuthorizer(authority.invite("b", "host"))
    altered = _signed_request(a)
    altered.keys.append(b"x" * 20)
    assert not asyncio.run(b.validate_request(altered))

    # a's credential and RSA key, with the request key of someone who does not hold that key
    mallory = SwarmAuthorizer(authority.invite("m", "host"))
    asyncio.run(mallory.refresh_token_if_needed())
    asyncio.run(a.refresh_token_if_needed())
    stolen = AccessToken()
    stolen.CopyFrom(a._local_access_token)
    stolen.signature = mallory._local_access_token.signature
    mallory._local_access_token = stolen
    assert not asyncio.run(b.validate_request(_signed_request(mallory)))

    reader = SwarmAuthorizer(authority.invite("r", "client"))
    assert asyncio.run(b.validate_request(_signed_request(reader)))
    store = dht_pb2.StoreRequest(keys=[b"k" * 20], values=[b"v"], expiration_time=[1.0])
    assert not asyncio.run(b.validate_request(_signed_request(reader, store)))
    assert asyncio.run(b.validate_request(_signed_request(a, dht_pb2.StoreRequest())))
