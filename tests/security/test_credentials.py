"""The authority's credentials and revocation list, and the call checks, without processes."""

from __future__ import annotations

import time

import pytest

from base.errors import ConfigError
from base.refusals import Reason
from security.authority import SwarmAuthority, parse_duration
from security.credentials import Credential, CredentialFile, CredentialRefused, SignedCredential
from security.grpc_auth import CallRefused, CallSigner, CallVerifier
from security.roles import may_call
from security.trust import SwarmTrust


@pytest.fixture
def authority(tmp_path) -> SwarmAuthority:
    return SwarmAuthority.init(tmp_path / "authority")


def test_a_credential_file_round_trips_and_verifies(authority, tmp_path):
    issued = authority.invite("alice", "trainer", validity_s=3600)
    issued.save(tmp_path / "alice.json")
    assert (tmp_path / "alice.json").stat().st_mode & 0o777 == 0o600
    loaded = CredentialFile.load(tmp_path / "alice.json")
    credential = loaded.signed.verify(authority.public)
    assert (credential.name, credential.role, credential.swarm_id) == (
        "alice",
        "trainer",
        authority.swarm_id,
    )
    assert loaded.rsa_private_key().get_public_key().to_bytes().decode() == credential.peer_key


def test_an_altered_credential_does_not_verify(authority):
    signed = authority.invite("bob", "client").signed
    promoted = Credential(**{**signed.credential.model_dump(), "role": "host"})
    forged = SignedCredential(
        credential=promoted, signature=signed.signature, authority_key=signed.authority_key
    )
    with pytest.raises(CredentialRefused) as err:
        forged.verify(authority.public)
    assert err.value.reason is Reason.BAD_CREDENTIAL


def test_init_refuses_to_overwrite_an_authority(authority):
    with pytest.raises(ConfigError, match="already exists"):
        SwarmAuthority.init(authority.directory)
    assert SwarmAuthority.init(authority.directory, exist_ok=True).public == authority.public


def test_calls_are_checked_for_role_proof_and_revocation(authority):
    trust = SwarmTrust(authority.public, authority.revocations_path)
    verifier = CallVerifier(trust)
    client = authority.invite("carol", "client")
    metadata = CallSigner(client).metadata()
    assert verifier.check("/node0.v1.Stage/OpenSession", metadata) == "client"
    assert verifier.check("/node0.v1.Stage/Info", ()) is None
    with pytest.raises(CallRefused) as err:
        verifier.check("/node0.v1.Stage/OpenSession", ())
    assert err.value.reason is Reason.NO_CREDENTIAL
    with pytest.raises(CallRefused) as err:
        verifier.check("/node0.v1.Stage/OpenTrainingJob", metadata)
    assert err.value.reason is Reason.ROLE_FORBIDS
    authority.revoke(["carol"])
    time.sleep(1.1)
    with pytest.raises(CallRefused) as err:
        verifier.check("/node0.v1.Stage/OpenSession", metadata)
    assert err.value.reason is Reason.CREDENTIAL_REVOKED


def test_an_unlisted_rpc_is_for_hosts_only():
    assert not may_call("trainer", "/node0.v1.Stage/SomethingNew")
    assert may_call("host", "/node0.v1.Stage/SomethingNew")


def test_durations():
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("15m") == 900
    with pytest.raises(ConfigError):
        parse_duration("soon")
