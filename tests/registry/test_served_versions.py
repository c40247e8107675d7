"""Registry versions as served model ids: name resolution and what ``node0 api`` lists (the
swarm calls are stubbed; tests/node/test_runtime_adapters.py loads over real daemons)."""

from __future__ import annotations

import time

from api.backend import SwarmBackend
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
    backend = SwarmBackend.__new__(SwarmBackend)
    backend.client = type("Client", (), {"model": "smollm2-135m", "records": lambda self: []})()
    backend._load_failed = {}
    assert backend._deployed_versions([], ("tuned",)) == ("deacon-v2",)
    assert [v.version for v in loads] == ["deacon-v2"]
    assert backend._deployed_versions([], ("deacon-v2",)) == ("deacon-v2",) and len(loads) == 1

    def refuse(records, version):
        raise RequestError("wrong_model")

    monkeypatch.setattr(registry_models, "load_on_swarm", refuse)
    assert backend._deployed_versions([], ()) == ()
    assert backend._load_failed["deacon-v2"] > time.monotonic()  # not retried every second
