"""The build on the shipped sample rig and on small rigs written by the tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from base.errors import QualityGateError
from corpus.build import build_corpus
from corpus.config import CorpusConfig
from corpus.scrub import Scrubber
from dataload.jsonl_reader import load_corpus_dir


def _outputs(run: Path) -> dict[str, bytes]:
    return {
        p.relative_to(run).as_posix(): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != "run_record.json"
    }


@pytest.fixture(scope="module")
def sample_build(tmp_path_factory, sample_rig):
    out = tmp_path_factory.mktemp("runs")
    return build_corpus(CorpusConfig(), [sample_rig], out)


def test_sample_build_is_byte_identical_twice(sample_build, sample_rig, tmp_path) -> None:
    again = build_corpus(CorpusConfig(), [sample_rig], tmp_path)
    assert again.run_dir != sample_build.run_dir
    assert _outputs(again.run_dir) == _outputs(sample_build.run_dir)


def test_every_source_reconciles(sample_build) -> None:
    recon = sample_build.manifest["reconciliation"]
    assert recon["ok"]
    for source, e in recon["by_source"].items():
        assert e["read"] == e["accepted"] + e["quarantined"] + e["rejected"], source
    # every line of every JSONL input is a record
    run = sample_build.run_dir
    for entry in sample_build.manifest["inputs"]:
        if entry["file"].endswith(".jsonl"):
            lines = (Path("samples/gastown-rig") / entry["file"]).read_bytes().count(b"\n")
            assert recon["by_source"][f"gastown:{entry['file']}"]["read"] == lines
    assert (run / "quality_report.json").is_file()


def test_malformed_lines_quarantined_with_file_line_reason(sample_build) -> None:
    rows = [
        json.loads(x) for x in (sample_build.run_dir / "quarantine.jsonl").read_text().splitlines()
    ]
    got = {(r["file"], r["line"], r["reason"]) for r in rows}
    assert (".beads/issues.jsonl", 21, "invalid_json") in got
    assert (".beads/issues.jsonl", 34, "missing_field") in got
    assert ("transcripts/2026-03-02.jsonl", 15, "invalid_utf8") in got
    assert ("transcripts/2026-03-02.jsonl", 4, "missing_field") in got
    assert (".beads/formulas/mol-release.formula.toml", 1, "invalid_toml") in got
    reasons = {r["reason"] for r in rows}
    assert {
        "uncertain_secret",
        "reversion_needs_review",
        "anomaly:prompt_injection",
        "anomaly:language",
        "anomaly:repetition",
        "unknown_role",
    } <= reasons


def test_outputs_load_in_the_training_reader_and_hold_no_secret(sample_build, sample_rig) -> None:
    sft, dpo = load_corpus_dir(sample_build.run_dir, strict=True)
    assert len(sft.records) == sample_build.manifest["counts"]["sft"]["total"] >= 50
    assert len(dpo.records) == sample_build.manifest["counts"]["dpo"]["total"] >= 3
    assert {p.failure_mode for p in dpo.records} >= {
        "ignored_conventions",
        "broke_tests",
        "timeout",
    }
    # every planted secret value found in the raw inputs is absent from every output byte
    scrubber = Scrubber()
    planted = set()
    for p in sample_rig.rglob("*"):
        if p.is_file() and p.suffix in (".jsonl", ".toml", ".md"):
            text = p.read_text(encoding="utf-8", errors="replace")
            planted |= {
                text[f.start : f.end]
                for f in scrubber.scan(text)
                if f.category == "SECRET" and f.end - f.start >= 12
            }
    assert len(planted) >= 12
    blob = b"".join(p.read_bytes() for p in sample_build.run_dir.rglob("*") if p.is_file())
    leaked = [v[:6] for v in planted if v.encode() in blob]
    assert not leaked
    assert b"/home/steve" not in blob and b"dana.kovacs@" not in blob


def test_recency_and_reversion_on_sample(sample_build) -> None:
    run = sample_build.run_dir
    rejected = {
        (r["file"], r["line"]): r["reason"]
        for r in map(json.loads, (run / "rejected.jsonl").read_text().splitlines())
    }
    assert rejected[(".beads/formulas/archive/mol-polecat-work.v2.formula.toml", 1)] == "superseded"
    assert rejected[("history/CLAUDE.md/20260210T090000Z.md", 1)] == "superseded"
    assert rejected[("transcripts/2026-03-02.jsonl", 10)] == "rig_not_shared"
    review = [json.loads(x) for x in (run / "review.jsonl").read_text().splitlines()]
    assert [r["artifact"] for r in review] == ["doc:polecats/CLAUDE.md"]


def test_approved_reversion_wins(sample_rig, tmp_path, sample_build) -> None:
    review = json.loads((sample_build.run_dir / "review.jsonl").read_text().splitlines()[0])
    cfg = CorpusConfig.model_validate(
        {"clean": {"approved_reversions": [review["reverting_sha256"]]}}
    )
    result = build_corpus(cfg, [sample_rig], tmp_path)
    assert result.manifest["counts"]["reversions_flagged"] == 0
    sft, _ = load_corpus_dir(result.run_dir)
    assert any(r.provenance.file == "polecats/CLAUDE.md" for r in sft.records)


def test_gate_failure_writes_report_and_no_datasets(sample_rig, tmp_path) -> None:
    cfg = CorpusConfig.model_validate({"gates": {"max_quarantine_rate": 0.01}})
    with pytest.raises(QualityGateError) as exc:
        build_corpus(cfg, [sample_rig], tmp_path)
    assert "max_quarantine_rate" in str(exc.value)
    (run,) = tmp_path.iterdir()
    report = json.loads((run / "quality_report.json").read_text())
    assert report["passed"] is False and report["datasets_written"] is False
    assert not (run / "sft").exists()
    assert json.loads((run / "run_record.json").read_text())["status"] == "failed"


def _mini_rig(root: Path, name: str, share: bool, text: str) -> Path:
    rig = root / name
    (rig / "transcripts").mkdir(parents=True)
    (rig / "rig.toml").write_text(
        f'[rig]\nname = "{name}"\n[corpus]\nshare_across_rigs = {str(share).lower()}\n'
    )
    lines = []
    for i in range(3):
        lines.append(
            json.dumps(
                {
                    "schema": "gastown.transcript/1",
                    "session_id": f"{name}-{i}",
                    "rig": name,
                    "role": "crew",
                    "outcome": "success",
                    "bead_id": f"{name}-b{i}",
                    "turns": [
                        {"speaker": "user", "text": f"{text} task number {i} of the {name} rig"},
                        {
                            "speaker": "assistant",
                            "text": f"$ bd ready\nWorking on {name} {i} "
                            f"with a distinct answer about item {i * 7919} in {name}.",
                        },
                    ],
                }
            )
        )
    (rig / "transcripts" / "s.jsonl").write_text("\n".join(lines) + "\n")
    return rig


def test_cross_rig_sharing_is_opt_in(tmp_path) -> None:
    home = _mini_rig(tmp_path, "home", False, "Fix the convoy loader")
    shared = _mini_rig(tmp_path, "shared", True, "Review the mail router")
    private = _mini_rig(tmp_path, "private", False, "Plan the registry")
    cfg = CorpusConfig.model_validate({"gates": {"min_sft_examples": 1}})
    result = build_corpus(cfg, [home, shared, private], tmp_path / "runs")
    sft, _ = load_corpus_dir(result.run_dir)
    assert sorted({r.provenance.rig for r in sft.records}) == ["home", "shared"]
    recon = result.manifest["reconciliation"]["by_source"]
    assert recon["private:transcripts/s.jsonl"]["rejected"] == 3


def test_build_does_not_modify_its_inputs(sample_rig, tmp_path) -> None:
    copy = tmp_path / "rig"
    shutil.copytree(sample_rig, copy)
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    build_corpus(CorpusConfig(), [copy], tmp_path / "runs")
    assert before == {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
