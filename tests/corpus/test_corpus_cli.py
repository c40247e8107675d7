"""`node0 corpus` as real subprocesses, the way users and agents run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from provenance import sha256_file

REPO = Path(__file__).resolve().parents[2]
NODE0 = [sys.executable, "-m", "node.cli"]

pytestmark = pytest.mark.integration


def _run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([*NODE0, *args], cwd=cwd, capture_output=True, text=True, timeout=240)


def test_build_twice_gives_identical_manifest_hashes(tmp_path) -> None:
    runs = []
    for _ in range(2):
        p = _run("corpus", "build", "--rig", "samples/gastown-rig", "--out", str(tmp_path))
        assert p.returncode == 0, p.stderr
        summary = json.loads(p.stdout.strip().splitlines()[-1])
        assert summary["reconciliation_ok"] is True
        runs.append(Path(summary["run_dir"]))
    assert runs[0] != runs[1]
    assert sha256_file(runs[0] / "manifest.json") == sha256_file(runs[1] / "manifest.json")
    record = json.loads((runs[0] / "run_record.json").read_text())
    assert record["status"] == "done"
    assert {a["path"] for a in record["artifacts"]} >= {"manifest.json", "quarantine.jsonl"}
    assert (
        "config sha256"
        in _run("corpus", "build", "--rig", "samples/gastown-rig", "--out", str(tmp_path)).stderr
    )


def test_gate_failure_exits_9(tmp_path) -> None:
    cfg = tmp_path / "strict.yaml"
    cfg.write_text("gates:\n  min_sft_examples: 100000\n")
    p = _run(
        "corpus",
        "build",
        "--rig",
        "samples/gastown-rig",
        "--out",
        str(tmp_path / "r"),
        "--config",
        str(cfg),
    )
    assert p.returncode == 9, p.stderr
    assert "min_sft_examples" in p.stderr and "quality_report.json" in p.stderr


def test_bad_config_exits_3(tmp_path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("gates:\n  max_quarantine_rate: lots\n")
    p = _run(
        "corpus",
        "build",
        "--rig",
        "samples/gastown-rig",
        "--out",
        str(tmp_path),
        "--config",
        str(cfg),
    )
    assert p.returncode == 3 and "max_quarantine_rate" in p.stderr


def test_missing_rig_exits_8(tmp_path) -> None:
    p = _run("corpus", "build", "--rig", str(tmp_path / "nope"), "--out", str(tmp_path))
    assert p.returncode == 8 and "does not exist" in p.stderr


def test_help_and_scan() -> None:
    assert "--rig" in _run("corpus", "build", "--help").stdout
    p = _run(
        "corpus", "scan", "samples/gastown-rig/transcripts/2026-03-02.jsonl", "--fail-on-findings"
    )
    assert p.returncode == 1
    assert "SECRET:github_token" in p.stdout and "ghp_" not in p.stdout
