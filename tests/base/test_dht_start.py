"""A DHT peer that is not up in time is a clear SwarmError, and its child is gone."""

from __future__ import annotations

import gc
import multiprocessing
import os

import pytest

from base.dht import start_dht
from base.errors import SwarmError


def test_a_dht_not_ready_in_time_fails_clearly_and_leaves_no_child():
    before = {p.pid for p in multiprocessing.active_children()}
    with pytest.raises(SwarmError, match="did not come up within"):
        start_dht([], start_timeout=0.001, attempts=2)
    assert {p.pid for p in multiprocessing.active_children()} <= before


class _Finalized:
    """A cycle whose finalizer writes the pid that ran it."""

    def __init__(self, path):
        self.path = path
        self.me = self

    def __del__(self):
        with open(self.path, "a") as handle:
            handle.write(f"{os.getpid()}\n")


def test_a_forked_child_never_runs_the_parents_finalizers(tmp_path):
    import base.dht  # noqa: F401  (registers the at-fork handler)

    gc.disable()  # keep the cycle alive until the fork
    try:
        path = tmp_path / "finalized"
        _Finalized(path)
        pid = os.fork()
        if pid == 0:
            gc.collect()
            os._exit(0)
        os.waitpid(pid, 0)
    finally:
        gc.enable()
    gc.collect()
    assert path.read_text().split() == [str(os.getpid())]


def test_a_dht_signs_with_its_authorizers_key_or_the_given_one(tmp_path):
    from hivemind.utils.crypto import RSAPrivateKey

    from base.dht_schema import owner_marker
    from security.authority import SwarmAuthority
    from security.dht_authorizer import SwarmAuthorizer

    credential = SwarmAuthority.init(tmp_path / "authority").invite("h", "host")
    dht = start_dht([], authorizer=SwarmAuthorizer(credential))
    try:
        assert dht.owner_marker == owner_marker(credential.rsa_private_key())
        assert credential.credential.peer_key.split()[1] in dht.owner_marker
    finally:
        dht.shutdown()
    key = RSAPrivateKey()
    dht = start_dht([], signing_key=key)
    try:
        assert dht.owner_marker == owner_marker(key)
    finally:
        dht.shutdown()
