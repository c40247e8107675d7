"""Signed stage records between real DHT peers (each a hivemind DHT child process), with no
credentials: signing is not an access check, so an open swarm's records are owned too."""

from __future__ import annotations

import base64
import time

import pytest
from hivemind.utils.crypto import RSAPrivateKey

from base.dht import start_dht, visible_maddrs
from base.dht_records import STAGES_KEY, StageRecord, announce, dht_subkey, fetch_records
from base.dht_schema import peer_id_of_owner, stages_schema
from security.authority import SwarmAuthority
from security.revocation import RevocationList, fetch, publish, revocations_key

TEMPLATE = StageRecord(
    model="m", start=0, end=2, num_layers=4, endpoint="127.0.0.1:5000", peer_id="-"
)
RECORD = TEMPLATE  # A's record, its peer id set by the fixture


@pytest.fixture(scope="module")
def peers():
    """Host A, host B and a reader C, each signing with its own key, their libp2p identity."""
    global RECORD
    a = start_dht([], signing_key=RSAPrivateKey(), owner_identity=True)
    started = [a]
    try:
        for _ in range(2):
            started.append(
                start_dht(visible_maddrs(a), signing_key=RSAPrivateKey(), owner_identity=True)
            )
        RECORD = TEMPLATE.model_copy(update={"peer_id": str(a.peer_id)})
        yield started
    finally:
        for dht in started:
            dht.shutdown()


def test_the_schema_covers_every_stage_record_field():
    (field,) = stages_schema().__fields__.values()
    record_schema = field.outer_type_.__args__[1]
    assert set(record_schema.__fields__) == set(StageRecord.model_fields)


def test_only_the_owner_writes_its_record(peers):
    a, b, c = peers
    announce(a, [RECORD], ttl=60)
    assert fetch_records(c, "m") == [RECORD]
    later = time.time() + 3600
    forged = RECORD.model_dump() | {"endpoint": "127.0.0.1:1"}
    # over A's subkey (B cannot sign for A's key), without an owner marker, a wrong type under
    # B's own marker, a field the schema does not know, and a plain value over the whole key
    assert not b.store(STAGES_KEY, forged, later, subkey=dht_subkey(RECORD, a.owner_marker))
    assert not b.store(STAGES_KEY, forged, later, subkey=f"m|{RECORD.subkey}")
    own = dht_subkey(RECORD, b.owner_marker)
    assert not b.store(STAGES_KEY, forged | {"start": 0.0}, later, subkey=own)
    assert not b.store(STAGES_KEY, forged | {"rogue": 1}, later, subkey=own)
    assert not b.store(STAGES_KEY, "gone", later)
    assert fetch_records(c, "m") == [RECORD]
    # B's own, well-formed record is accepted next to A's
    other = RECORD.model_copy(update={"peer_id": str(b.peer_id), "endpoint": "127.0.0.1:6000"})
    announce(b, [other], ttl=60)
    assert {r.peer_id for r in fetch_records(c, "m")} == {str(a.peer_id), str(b.peer_id)}
    # the owner refreshes and overwrites its own
    moved = RECORD.model_copy(update={"load": 0.5})
    announce(a, [moved], ttl=60)
    assert moved in fetch_records(c, "m")


def test_a_record_claiming_another_peers_id_is_ignored(peers):
    """B stores, under its own owner marker (signed, schema-valid, so the DHT accepts it), a
    record that claims A's peer id and an endpoint of B's choosing: readers skip it, because
    A's peer id is not B's key's; A's own record still routes."""
    a, b, c = peers
    mine = RECORD.model_copy(update={"model": "n"})
    announce(a, [mine], ttl=60)
    spoof = mine.model_copy(update={"start": 2, "end": 4, "endpoint": "127.0.0.1:6666"})
    announce(b, [spoof], ttl=60)
    found = c.get(STAGES_KEY, latest=True).value
    assert dht_subkey(spoof, b.owner_marker) in found  # stored: only readers can tell
    assert fetch_records(c, "n") == [mine]
    honest = spoof.model_copy(update={"peer_id": str(b.peer_id)})
    announce(b, [honest], ttl=60)
    assert fetch_records(c, "n") == [mine, honest]
    # each peer's libp2p id is its signing key's
    assert str(a.peer_id) == peer_id_of_owner(a.owner_marker)
    assert str(b.peer_id) != str(a.peer_id)


def test_only_authority_signed_revocation_lists_are_stored(tmp_path):
    authority = SwarmAuthority.init(tmp_path / "authority")
    host = authority.invite("h", "host")

    from security.dht_authorizer import SwarmAuthorizer

    a = start_dht([], authorizer=SwarmAuthorizer(host))
    try:
        b = start_dht(visible_maddrs(a), authorizer=SwarmAuthorizer(host))
        try:
            assert fetch(b, authority.public) is None
            good = RevocationList(swarm_id=authority.swarm_id, serial=3, revoked={"x": "x"})
            good.signature = base64.b64encode(authority._key.sign(good.body())).decode()
            assert publish(a, good)
            assert fetch(b, authority.public) == good
            rogue = SwarmAuthority.init(tmp_path / "rogue")
            forged = RevocationList(swarm_id=authority.swarm_id, serial=9, revoked={})
            forged.signature = base64.b64encode(rogue._key.sign(forged.body())).decode()
            assert not publish(a, forged)
            # an authentic list under another serial's subkey (a replay over a newer one)
            key = revocations_key(authority.swarm_id)
            assert not a.store(key, good.model_dump_json(), time.time() + 600, subkey=7)
            assert fetch(b, authority.public) == good
        finally:
            b.shutdown()
    finally:
        a.shutdown()
