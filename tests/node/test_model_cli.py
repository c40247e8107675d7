"""``node0 model …`` in-process: --json outputs, refusals with reasons, deploy writing the town
settings (previous file kept), rollback, prune listing before removing, stale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from base.errors import ExitCode
from node.cli import main
from tests.registry.helpers import make_adapter_dir, scores


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("NODE0_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def node0(capsys, *argv) -> tuple[int, object]:
    code = main(list(argv))
    out = capsys.readouterr().out
    try:
        return code, json.loads(out)
    except json.JSONDecodeError:
        return code, out


def register(capsys, tmp: Path, seed: int, *, passed: bool | None = True, rig: Path | None = None):
    adapter = make_adapter_dir(tmp / f"adapter-{seed}", seed)
    argv = ["model", "register", "--json", "--role", "deacon", "--adapter", str(adapter)]
    if passed is not None:
        eval_dir = tmp / f"eval-{seed}"
        eval_dir.mkdir()
        (eval_dir / "scores.json").write_text(json.dumps(scores(passed)))
        argv += ["--eval-run", str(eval_dir)]
    if rig is not None:
        argv += ["--rig", str(rig)]
    return node0(capsys, *argv)


def test_register_list_show_adapters_json(env, capsys, small_rig):
    code, v1 = register(capsys, env, 1, rig=small_rig)
    assert code == 0 and v1["id"] == "deacon-v1" and v1["gate"] == "passed"
    assert Path(v1["run_dir"], "run_record.json").is_file()
    assert v1["conventions"]["rig"] == "testrig" and "CLAUDE.md" in v1["conventions"]["files"]
    code, listing = node0(capsys, "model", "list", "--json")
    assert [v["id"] for v in listing] == ["deacon-v1"]
    code, shown = node0(capsys, "model", "show", "deacon-v1", "--json")
    assert shown["adapters"][0]["sha256"] == v1["adapters"][0]["sha256"]
    assert [e["kind"] for e in shown["events"]] == ["register"]
    code, adapters = node0(capsys, "model", "adapters", "--json")
    assert adapters[0]["name"] == "deacon-v1" and adapters[0]["rank"] == 4
    code, text = node0(capsys, "model", "list")
    assert text.splitlines()[0].split()[:4] == ["VERSION", "ROLE", "BASE", "GATE"]
    assert "deacon-v1" in text.splitlines()[1]


def test_refusals_carry_reasons_in_json(env, capsys):
    code, out = node0(capsys, "model", "show", "deacon-v7", "--json")
    assert code == ExitCode.REQUEST and out["reason"] == "unknown_version"
    adapter = make_adapter_dir(env / "a", 1)
    code, out = node0(
        capsys,
        "model",
        "register",
        "--json",
        "--role",
        "deacon",
        "--adapter",
        str(adapter),
        "--sha256",
        "f" * 64,
    )
    assert code == ExitCode.CHECKPOINT and out["reason"] == "sha256_mismatch"


def test_deploy_gate_settings_and_rollback(env, capsys):
    settings = env / "town" / "settings.json"
    settings.parent.mkdir()
    settings.write_text(json.dumps({"agents": {"claude": {"command": "claude"}}, "theme": "x"}))
    register(capsys, env, 1)
    register(capsys, env, 2, passed=False)
    code, out = node0(
        capsys,
        "model",
        "deploy",
        "deacon-v1",
        "--rig",
        "gastown",
        "--settings",
        str(settings),
        "--json",
    )
    assert code == 0
    written = json.loads(settings.read_text())
    assert written["theme"] == "x" and "claude" in written["agents"]
    assert written["roles"]["deacon"] == "node0-deacon"
    assert written["agents"]["node0-deacon"]["args"][:2] == ["--model", "deacon-v1"]
    assert json.loads(Path(str(settings) + ".prev").read_text())["theme"] == "x"
    # a failed gate blocks the deploy and leaves the settings as they were
    code, out = node0(
        capsys,
        "model",
        "deploy",
        "deacon-v2",
        "--rig",
        "gastown",
        "--settings",
        str(settings),
        "--json",
    )
    assert code == ExitCode.QUALITY_GATE and out["reason"] == "gate_not_passed"
    assert json.loads(settings.read_text())["agents"]["node0-deacon"]["args"][1] == "deacon-v1"
    code, out = node0(
        capsys,
        "model",
        "deploy",
        "deacon-v2",
        "--rig",
        "gastown",
        "--ungated",
        "--settings",
        str(settings),
        "--json",
    )
    assert code == 0 and out["deployment"]["ungated"] == 1
    assert json.loads(settings.read_text())["agents"]["node0-deacon"]["args"][1] == "deacon-v2"
    code, out = node0(
        capsys,
        "model",
        "rollback",
        "--rig",
        "gastown",
        "--role",
        "deacon",
        "--settings",
        str(settings),
        "--json",
    )
    assert code == 0 and (out["from"], out["to"]) == ("deacon-v2", "deacon-v1")
    assert json.loads(settings.read_text())["agents"]["node0-deacon"]["args"][1] == "deacon-v1"


def test_prune_lists_then_needs_yes(env, capsys):
    for seed in (1, 2, 3):
        register(capsys, env, seed)
    node0(
        capsys,
        "model",
        "deploy",
        "deacon-v1",
        "--rig",
        "gastown",
        "--settings",
        str(env / "s.json"),
    )
    code, out = node0(capsys, "model", "prune", "--keep", "1", "--json")
    assert code == 0 and [p["version"] for p in out["plan"]] == ["deacon-v2"]
    assert out["pruned"] == []
    store = env / "home" / "models" / "sha256"
    assert len(list(store.iterdir())) == 3
    code, out = node0(capsys, "model", "prune", "--keep", "1", "--yes", "--json")
    assert [p["version"] for p in out["pruned"]] == ["deacon-v2"]
    assert len(list(store.iterdir())) == 2


def test_stale_reports_a_claude_md_edit(env, capsys, small_rig):
    register(capsys, env, 1, rig=small_rig)
    code, out = node0(capsys, "model", "stale", "--rig", str(small_rig), "--json")
    assert code == 0 and out["versions"][0]["stale"] is False
    (small_rig / "CLAUDE.md").write_text("# Conventions\nEverything changed.\n")
    code, out = node0(capsys, "model", "stale", "--rig", str(small_rig), "--json")
    report = out["versions"][0]
    assert code == ExitCode.QUALITY_GATE and report["changed"] == ["CLAUDE.md"]
    assert report["drift_score"] == pytest.approx(1 / 3, abs=1e-4)
    assert "train-role-model --var role=deacon" in report["retrain"]
    code, _ = node0(capsys, "model", "stale", "--rig", str(small_rig), "--threshold", "0.5")
    assert code == 0


def test_stale_retrain_starts_the_formula(env, capsys, small_rig, monkeypatch):
    import subprocess

    register(capsys, env, 1, rig=small_rig)
    (small_rig / "AGENTS.md").write_text("# Agents\nNew rule.\n")
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda argv, **kw: calls.append(argv) or 0)
    assert main(["model", "stale", "--rig", str(small_rig), "--retrain"]) == 0
    (argv,) = calls
    assert argv[1:7] == ["-m", "node.cli", "formula", "run", "train-role-model", "--var"]
    assert argv[7:] == ["role=deacon", "--var", f"rig={small_rig.resolve()}"]
