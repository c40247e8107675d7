"""Issue 19: the smallest unit that holds the doubt is quarantined, the final leak check
quarantines instead of failing, and `node0 corpus audit` samples a build."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import corpus.build as build_mod
from base.errors import DataError, QualityGateError
from corpus.audit import audit_run, suspect_reason
from corpus.build import build_corpus
from corpus.config import CorpusConfig
from dataload.jsonl_reader import load_corpus_dir

REPO = Path(__file__).resolve().parents[2]
UNCERTAIN = "Zr8qP2xLmN4vT7wKc9BdYf3HjQ6sGa1EuW5"  # high entropy, no context: uncertain
PLANTED = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"


def _bead(i: int, close_reason: str) -> dict:
    return {
        "id": f"gt-t{i}",
        "title": f"Teach the witness patrol about stalled polecat number {i}",
        "description": f"The witness misses polecat {i} after 30 minutes idle; add a check.",
        "status": "closed",
        "priority": 2,
        "issue_type": "bug",
        "created_at": f"2026-01-0{i + 1}T08:00:00Z",
        "updated_at": f"2026-01-0{i + 1}T09:00:00Z",
        "created_by": "gastown/mayor",
        "close_reason": close_reason,
    }


def _rig(root: Path, reasons: list[str]) -> Path:
    rig = root / "rig"
    (rig / ".beads").mkdir(parents=True)
    (rig / "rig.toml").write_text('[rig]\nname = "gastown"\n[corpus]\nshare_across_rigs = false\n')
    lines = [json.dumps(_bead(i, r)) for i, r in enumerate(reasons)]
    (rig / ".beads" / "issues.jsonl").write_text("\n".join(lines) + "\n")
    return rig


CFG = CorpusConfig.model_validate({"gates": {"min_sft_examples": 1, "max_quarantine_rate": 1.0}})


def test_uncertain_finding_quarantines_its_example_not_the_record(tmp_path) -> None:
    rig = _rig(
        tmp_path,
        [f"fixed; the cache key was {UNCERTAIN} in the log", "fixed by adding the idle check"],
    )
    result = build_corpus(CFG, [rig], tmp_path / "runs")
    sft, _ = load_corpus_dir(result.run_dir)
    tasks = sorted((r.provenance.line, r.task) for r in sft.records)
    # bead 1 (line 1) keeps its clean creation example; its close example is held back
    assert tasks == [(1, "bead-creation"), (2, "bead-creation"), (2, "bead-lifecycle")]
    held = [json.loads(x) for x in (result.run_dir / "quarantined_examples.jsonl").open()]
    assert [(h["reason"], h["records"]) for h in held] == [
        ("uncertain_secret", ["gastown:.beads/issues.jsonl:1"])
    ]
    assert UNCERTAIN not in (result.run_dir / "quarantined_examples.jsonl").read_text()
    blob = b"".join(p.read_bytes() for p in result.run_dir.rglob("*.jsonl"))
    assert UNCERTAIN.encode() not in blob
    assert result.manifest["reconciliation"]["ok"]


def _no_scrub(drafts, scrubber, ledger, held):
    return drafts  # a scrubber that missed everything: only the final leak check is left


def test_leak_found_at_the_end_is_quarantined_and_never_written(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(build_mod, "scrub_drafts", _no_scrub)
    reasons = [f"rotated {PLANTED} and fixed it"] + [f"fixed in step {i}" for i in range(1, 4)]
    cfg = CFG.model_copy(update={"gates": CFG.gates.model_copy(update={"max_leak_rate": 0.5})})
    result = build_corpus(cfg, [_rig(tmp_path, reasons)], tmp_path / "runs")
    blob = b"".join(p.read_bytes() for p in result.run_dir.rglob("*") if p.is_file())
    assert PLANTED.encode() not in blob and PLANTED[:12].encode() not in blob
    gate = next(
        g
        for g in json.loads((result.run_dir / "quality_report.json").read_text())["gates"]
        if g["gate"] == "leak_check"
    )
    assert gate["passed"] and gate["quarantined_examples"] == 1 and gate["checked_examples"] == 8
    sft, _ = load_corpus_dir(result.run_dir)
    assert len(sft.records) == 7


def test_leak_rate_above_the_limit_fails_the_gate(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(build_mod, "scrub_drafts", _no_scrub)
    reasons = [f"rotated {PLANTED} and fixed it", "fixed by adding the idle check"]
    with pytest.raises(QualityGateError, match="leak_check"):
        build_corpus(CFG, [_rig(tmp_path, reasons)], tmp_path / "runs")
    (run,) = (tmp_path / "runs").iterdir()
    assert not (run / "sft").exists()
    assert PLANTED.encode() not in b"".join(p.read_bytes() for p in run.rglob("*") if p.is_file())


def test_audit_records_a_seeded_sample_in_the_run(tmp_path) -> None:
    rig = _rig(tmp_path, [f"fixed in step {i}, token={PLANTED}" for i in range(4)])
    result = build_corpus(CFG, [rig], tmp_path / "runs")
    a = audit_run(result.run_dir, 3, seed=7, reviewer="tester", verdict="clean")
    b = audit_run(result.run_dir, 3, seed=7)
    assert [s["example"] for s in a["samples"]] == [s["example"] for s in b["samples"]]
    assert a["sampled"] == 3 and a["population"] == 8
    index = (result.run_dir / "audits" / "index.jsonl").read_text().splitlines()
    assert len(index) == 2 and json.loads(index[0])["reviewer"] == "tester"
    spans = [sp["context"] for s in a["samples"] for sp in s["placeholder_spans"]]
    assert all("<SECRET:github_token>" in c for c in spans)
    assert PLANTED not in json.dumps(a)


def test_audit_shows_credential_shaped_tokens_masked() -> None:
    assert suspect_reason("zq_Ab3dEf9GhIjK2lMnOp7QrS")
    assert suspect_reason("Xk29qLm3Np8RtVw5Yz7Bc4Df6Gh")
    for kept in ("sha256:" + "ab" * 32, "9b2f6c1e-4d3a-4f7e-a1b2-c3d4e5f6a7b8", "node0-0.4.1rc2"):
        assert suspect_reason(kept) is None


def test_audit_refuses_bad_input_clearly(tmp_path) -> None:
    with pytest.raises(DataError, match="no manifest.json"):
        audit_run(tmp_path, 5)
    with pytest.raises(DataError, match="at least 1"):
        audit_run(tmp_path, 0)
    p = subprocess.run(
        [sys.executable, "-m", "node.cli", "corpus", "audit", str(tmp_path), "--sample", "5"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode != 0 and "no manifest.json" in p.stderr
