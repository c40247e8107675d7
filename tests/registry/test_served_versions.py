"""Registry versions as served model ids: name resolution and what ``node0 api`` lists (the
swarm calls are stubbed; tests/node/test_runtime_adapters.py loads over real daemons)."""

from __future__ import annotations

import threading
import time

from api.backend import ModelListing
from base.dht_records import StageRecord
from base.errors import RequestError
from inference import registry_models
from inference.registry_models import deployed_versions, resolve_registered
from registry import Registry
from tests.registry.helpers import make_adapter_dir, scores


def test_resolution_and_deployed_versions(tmp_path, monkeypatch):
    db = tmp_path / "registry.db"
    registry = Registry(db, tmp_path / "store")
    for seed in (1, 2):
        registry.register(role="deacon", base_model="smollm2-135m",
                          adapter_dir=make_adapter_dir(tmp_path / f"a{seed}", seed),
                          eval_scores=scores(True))  # fmt: skip
    registry.register(
        role="witness",
        base_model="other-model",
        adapter_dir=make_adapter_dir(tmp_path / "w", 3),
        eval_scores=scores(True),
    )
    registry.deploy("deacon-v2", rig="gastown")
    registry.deploy("witness-v1", rig="gastown")
    registry.close()
    resolved = resolve_registered("deacon-v1", db)
    assert (resolved.base_model, resolved.adapter) == ("smollm2-135m", "deacon-v1")
    assert (resolved.path / "adapter_model.safetensors").is_file()
    assert resolve_registered("smollm2-135m", db) is None  # not a version id
    assert resolve_registered("mayor-v1", db) is None  # a name the registry does not have
    assert resolve_registered("deacon-v1", tmp_path / "absent.db") is None
    assert [v.version for v in deployed_versions("smollm2-135m", db)] == ["deacon-v2"]

    # node0 api lists a deployed version from the deploy on, loading it where not announced
    monkeypatch.setenv("NODE0_REGISTRY", str(db))
    loads = []
    monkeypatch.setattr(registry_models, "load_on_swarm", lambda records, v: loads.append(v))
    listing = ModelListing(FakeClient(), "smollm2-135m", ttl=0.0)
    assert listing.get().adapters == ("deacon-v2",)
    assert [v.version for v in loads] == ["deacon-v2"]
    FakeClient.announced = ("deacon-v2",)  # the route announces it now: nothing to load
    assert listing.get().adapters == ("deacon-v2",) and len(loads) == 1
    FakeClient.announced = ()

    def refuse(records, version):
        raise RequestError("wrong_model")

    monkeypatch.setattr(registry_models, "load_on_swarm", refuse)
    assert listing.get().adapters == ()
    assert listing._failed["deacon-v2"] > time.monotonic()  # not retried every second


class FakeClient:
    """The swarm client's two calls the listing makes: a route over layers [0, 2) whose
    stages announce ``announced``."""

    model = "smollm2-135m"
    announced: tuple[str, ...] = ()

    def records(self):
        return [
            StageRecord(
                model=self.model,
                start=0,
                end=2,
                num_layers=2,
                endpoint="127.0.0.1:1",
                peer_id="a",
                adapters=list(self.announced),
            )
        ]


def test_a_slow_load_blocks_no_other_listing_and_runs_once(tmp_path, monkeypatch):
    db = tmp_path / "registry.db"
    registry = Registry(db, tmp_path / "store")
    registry.register(
        role="deacon",
        base_model="smollm2-135m",
        adapter_dir=make_adapter_dir(tmp_path / "a1", 1),
        eval_scores=scores(True),
    )
    registry.deploy("deacon-v1", rig="gastown")
    registry.close()
    monkeypatch.setenv("NODE0_REGISTRY", str(db))
    started, release, loads = threading.Event(), threading.Event(), []

    def slow_load(records, version):
        loads.append(version.adapter)
        started.set()
        assert release.wait(60)

    monkeypatch.setattr(registry_models, "load_on_swarm", slow_load)
    listing = ModelListing(FakeClient(), "smollm2-135m", ttl=0.0)  # every call refreshes
    first: list = []
    loader = threading.Thread(target=lambda: first.append(listing.get()))
    loader.start()
    assert started.wait(60)
    others: list = []
    reader = threading.Thread(target=lambda: others.extend(listing.get() for _ in range(3)))
    reader.start()
    reader.join(60)
    # while the load hangs, other listings answer (without the version not loaded yet) and
    # start no second load of it
    assert not reader.is_alive() and loader.is_alive()
    assert [o.adapters for o in others] == [()] * 3 and loads == ["deacon-v1"]
    release.set()
    loader.join(60)
    assert first[0].adapters == ("deacon-v1",)
    assert listing.get().adapters == ("deacon-v1",)  # listed from now on, loaded again (no-op)
