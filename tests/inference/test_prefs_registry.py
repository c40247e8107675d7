"""``node0 prefs`` model names through the registry (:func:`inference.prefs.resolve_spec`):
``deacon-v1`` and ``deacon@v1`` resolve to the base model and the version's adapter; an
unknown version, or a version name with no registry, is refused before any session."""

from __future__ import annotations

import pytest

from base.errors import ExitCode, RequestError
from inference.prefs import ModelSpec, resolve_spec
from registry import Registry
from tests.fixtures import make_adapter


@pytest.fixture(scope="module")
def registry_db(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("prefs-registry")
    registry = Registry(root / "registry.db", root / "store")
    scores = {"categories": {"x": {"score": 90}}, "composite": 90, "gate": {"passed": True}}
    for seed in (1, 2):
        make_adapter(tiny_model_dir, "deacon", seed, root / f"a{seed}")
        registry.register(
            role="deacon", base_model="smollm2-135m", adapter_dir=root / f"a{seed}",
            eval_scores=scores,
        )  # fmt: skip
    registry.close()
    return root / "registry.db"


def test_versions_resolve_to_base_and_adapter(registry_db):
    v1 = resolve_spec("deacon-v1", registry_db)
    assert (v1.base, v1.adapters, v1.version) == ("smollm2-135m", ("deacon-v1",), "deacon-v1")
    assert str(v1) == "deacon-v1" and len(v1.provenance()["sha256"]) == 64
    assert resolve_spec("deacon@v2", registry_db).adapters == ("deacon-v2",)
    # not a version name: MODEL[+ADAPTER…] as before, no registry needed
    plain = resolve_spec("smollm2-135m+gastown", registry_db.parent / "absent.db")
    assert plain == ModelSpec("smollm2-135m", ("gastown",)) and plain.provenance() is None


def test_unknown_versions_are_refused(registry_db, tmp_path):
    with pytest.raises(RequestError, match=r"no version deacon-v3 \(it has deacon-v1, deacon-v2\)"):
        resolve_spec("deacon-v3", registry_db)
    with pytest.raises(RequestError, match="nor any of that name") as err:
        resolve_spec("mayor@v1", registry_db)
    assert err.value.exit_code == ExitCode.REQUEST
    with pytest.raises(RequestError, match="no registry at"):
        resolve_spec("deacon-v1", tmp_path / "absent.db")
