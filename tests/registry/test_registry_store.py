"""The registry store: versions with lineage, sha256-checked artifacts, deploy / rollback /
prune, events, conventions drift, and training-job beads in bd's format."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from base.errors import CheckpointError, ConfigError, QualityGateError, RequestError
from base.hashing import sha256_file
from gastown.beads import newest_beads, read_beads
from registry import JobBead, Registry, conventions_fingerprint, drift, read_scores
from registry.schema import TABLES
from tests.registry.helpers import make_adapter_dir, scores


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry(tmp_path / "registry.db", tmp_path / "store")
    yield reg
    reg.close()


def register(registry, tmp_path, seed, *, passed=True, role="deacon", **kw):
    adapter = make_adapter_dir(tmp_path / f"adapter-{seed}-{role}", seed)
    return registry.register(
        role=role,
        base_model="smollm2-135m",
        adapter_dir=adapter,
        eval_scores=None if passed is None else scores(passed),
        **kw,
    )


def test_schema_is_portable_sql_in_one_module():
    for ddl in TABLES.values():
        assert "AUTOINCREMENT" not in ddl and "WITHOUT ROWID" not in ddl


def test_register_numbers_versions_and_keeps_lineage(registry, tmp_path):
    v1 = register(registry, tmp_path, 1, lineage={"config_sha256": "c" * 64})
    v2 = register(registry, tmp_path, 2)
    assert (v1.id, v2.id) == ("deacon-v1", "deacon-v2")
    assert v2.parent == "deacon-v1" and v1.parent is None
    assert v1.config_sha256 == "c" * 64 and v1.gate == "passed"
    stored = registry.store.path_for(v1.adapters[0].sha256) / "adapter_model.safetensors"
    assert sha256_file(stored) == v1.adapters[0].sha256
    assert [e["kind"] for e in registry.events()] == ["register", "register"]
    # the database is a plain SQLite file another process can read
    rows = sqlite3.connect(registry.db_path).execute("SELECT id FROM versions").fetchall()
    assert sorted(rows) == [("deacon-v1",), ("deacon-v2",)]


def test_register_refuses_a_sha256_mismatch_and_records_nothing(registry, tmp_path):
    adapter = make_adapter_dir(tmp_path / "a", 1)
    with pytest.raises(CheckpointError) as err:
        registry.register(
            role="deacon", base_model="m", adapter_dir=adapter, expected_sha256="0" * 64
        )
    assert err.value.reason == "sha256_mismatch"
    assert registry.versions() == [] and not (registry.store.root / "sha256").exists()


def test_register_refuses_an_unknown_role_and_a_non_adapter(registry, tmp_path):
    with pytest.raises(ConfigError):
        registry.register(
            role="pilot", base_model="m", adapter_dir=make_adapter_dir(tmp_path / "a", 1)
        )
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError):
        registry.register(role="deacon", base_model="m", adapter_dir=tmp_path / "empty")


def test_deploy_refuses_ungated_unless_asked_and_records_it(registry, tmp_path):
    failed = register(registry, tmp_path, 1, passed=False)
    never = register(registry, tmp_path, 2, passed=None)
    with pytest.raises(QualityGateError) as err:
        registry.deploy(failed.id, rig="gastown")
    assert err.value.reason == "gate_not_passed"
    with pytest.raises(QualityGateError) as err:
        registry.deploy(never.id, rig="gastown")
    assert err.value.reason == "not_evaluated"
    assert registry.current_deployments() == []
    row = registry.deploy(never.id, rig="gastown", ungated=True, reason="hotfix")
    assert row["ungated"] == 1
    event = registry.events(never.id)[-1]
    assert event["kind"] == "deploy" and event["detail"]["ungated"] is True
    assert registry.get(never.id).deployed[0]["ungated"] is True


def test_deploy_then_rollback_restores_the_previous_version(registry, tmp_path):
    v1, v2 = register(registry, tmp_path, 1), register(registry, tmp_path, 2)
    registry.deploy(v1.id, rig="gastown")
    registry.deploy(v2.id, rig="gastown")
    assert registry.deployment("gastown", "deacon")["version_id"] == "deacon-v2"
    ended, current = registry.rollback(rig="gastown", role="deacon", reason="misbehaves")
    assert (ended["version_id"], current["version_id"]) == ("deacon-v2", "deacon-v1")
    assert registry.deployment("gastown", "deacon")["version_id"] == "deacon-v1"
    with pytest.raises(RequestError) as err:
        registry.rollback(rig="gastown", role="deacon")
    assert err.value.reason == "no_previous_deployment"
    kinds = [(e["kind"], e["reason"]) for e in registry.events()]
    assert kinds[-1] == ("rollback", "misbehaves")


def test_deploy_refuses_a_corrupt_artifact(registry, tmp_path):
    v1 = register(registry, tmp_path, 1)
    weights = registry.store.path_for(v1.adapters[0].sha256) / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(CheckpointError) as err:
        registry.deploy(v1.id, rig="gastown")
    assert err.value.reason == "sha256_mismatch"


def test_prune_removes_only_undeployed_old_versions(registry, tmp_path):
    v1, v2, v3, v4 = (register(registry, tmp_path, s) for s in (1, 2, 3, 4))
    registry.deploy(v1.id, rig="gastown")
    plan = registry.prune_plan(keep=2)
    assert [v.id for v in plan] == ["deacon-v2"]  # v1 deployed, v3/v4 newest
    done = registry.prune(plan)
    assert done == [{"version": "deacon-v2", "removed_artifacts": [v2.adapters[0].sha256]}]
    assert not registry.store.path_for(v2.adapters[0].sha256).exists()
    for kept in (v1, v3, v4):
        registry.store.verify(kept.adapters[0].sha256)
    assert registry.get("deacon-v2").status == "pruned"
    assert registry.prune_plan(keep=2) == []
    with pytest.raises(RequestError) as err:
        registry.deploy("deacon-v2", rig="gastown")
    assert err.value.reason == "pruned"


def test_unknown_and_malformed_version_ids(registry):
    with pytest.raises(RequestError) as err:
        registry.get("deacon-v9")
    assert err.value.reason == "unknown_version"
    with pytest.raises(RequestError) as err:
        registry.get("deacon")
    assert err.value.reason == "bad_name"


def test_conventions_drift(small_rig):
    before = conventions_fingerprint(small_rig)
    assert set(before) == {
        "CLAUDE.md",
        "polecats/CLAUDE.md",
        ".beads/formulas/mol-witness-patrol.formula.toml",
    }
    (small_rig / "CLAUDE.md").write_text("# Conventions\nPush to main.\n")
    (small_rig / "AGENTS.md").write_text("# Agents\n")
    (small_rig / "polecats" / "CLAUDE.md").unlink()
    d = drift(before, conventions_fingerprint(small_rig))
    assert (d.changed, d.added, d.removed) == (["CLAUDE.md"], ["AGENTS.md"], ["polecats/CLAUDE.md"])
    assert d.score == pytest.approx(3 / 4)


def test_read_scores_checks_the_shape(tmp_path):
    (tmp_path / "scores.json").write_text(json.dumps(scores(True)))
    assert read_scores(tmp_path)["gate"]["passed"] is True
    (tmp_path / "scores.json").write_text(json.dumps({"composite": 1}))
    with pytest.raises(Exception, match="not an eval scores file"):
        read_scores(tmp_path)


def test_job_bead_lifecycle_in_bd_format(small_rig, tmp_path):
    bead = JobBead.create(small_rig, prefix="tr", title="train deacon", depends_on=["tr-a1"])
    for state in ("ready", "training", "syncing", "degraded", "training", "evaluating"):
        bead.set(state)
    bead.finish(version="deacon-v1", composite=80.0)
    read = read_beads(small_rig, rig="testrig")
    assert not read.problems
    newest = newest_beads(read.beads).winners[bead.id]
    assert newest.status == "degraded"  # it lost peers on the way, then finished
    assert [d.depends_on_id for d in newest.dependencies] == ["tr-a1"]
    notes = json.loads(newest.fields["notes"])
    assert notes["version"] == "deacon-v1" and notes["composite"] == 80.0
    again = JobBead.load(small_rig, bead.id)
    assert again.status == "degraded" and again.was_degraded
