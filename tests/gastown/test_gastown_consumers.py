"""The corpus and RAG read Gas Town files through the same readers: the same beads, the same
versions, the same roles — and the same verdict where their old readers disagreed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corpus.config import CorpusConfig
from corpus.ledger import Ledger
from corpus.readers import read_beads, read_claude_code, read_docs, read_formulas, read_transcripts
from corpus.recency import apply_recency
from corpus.units import Unit
from gastown import newest_beads
from gastown import read_beads as read_bead_export
from gastown.rig import Rig, load_rig
from rag.sources import read_rig
from tests.fixtures import SAMPLE_RIG, make_small_rig, write_jsonl


def _corpus_units(rig: Rig) -> tuple[list[Unit], Ledger]:
    """What the corpus keeps of a rig after reading and recency (before formatting)."""
    cfg = CorpusConfig.model_validate({"clean": {"reversion_policy": "accept"}})
    ledger = Ledger()
    src, ex = cfg.sources, cfg.sources.exclude
    units = read_transcripts(rig, rig.files(src.transcripts, ex), ledger, cfg.roles)
    units += read_claude_code(rig, rig.files(src.claude_code, ex), ledger, unknown_outcome="sft")
    units += read_beads(rig, rig.files(src.beads, ex), ledger, cfg.roles, cfg.default_bead_role)
    history = rig.files(["**/*"], ex, under=src.history_dir)
    units += read_docs(rig, rig.files(src.docs, ex), history, src.history_dir, ledger)
    units += read_formulas(rig, rig.files(src.formulas, ex), ledger)
    kept, _ = apply_recency(units, ledger, cfg.clean)
    return [u for u in kept if u.rig == rig.name], ledger


def _final_reasons(ledger: Ledger, kept: list[Unit]) -> dict[tuple[str, int], str]:
    for u in kept:
        ledger.mark(u.refs, "accepted", "kept")
    return {(ref.file, ref.line): final.reason for ref, final, _ in ledger.dispositions()}


@pytest.fixture(scope="module")
def sample_views() -> tuple[list[Unit], dict]:
    kept, _ = _corpus_units(load_rig(SAMPLE_RIG))
    rag = {(d.collection, d.unit): d for d in read_rig(SAMPLE_RIG, rig="gastown").documents()}
    return kept, rag


def test_corpus_and_rag_keep_the_same_bead_versions(sample_views) -> None:
    kept, rag = sample_views
    corpus_beads = {u.bead_id: u for u in kept if u.kind == "bead"}
    rag_beads = {unit: d for (coll, unit), d in rag.items() if coll == "beads"}
    newest = newest_beads(read_bead_export(SAMPLE_RIG, rig="gastown").beads).winners
    assert set(corpus_beads) == set(rag_beads) == set(newest)
    assert len(newest) == 46
    for bead_id, bead in newest.items():
        assert corpus_beads[bead_id].refs[0].line == bead.line  # the same version ...
        assert corpus_beads[bead_id].sha256 == bead.sha256
        assert rag_beads[bead_id].source_sha256 == bead.canonical_sha256  # ... in both
    assert corpus_beads["gt-n84s"].extra["bead"]["status"] == "closed"
    assert "status: closed" in rag_beads["gt-n84s"].text


def test_bead_roles_come_from_the_same_record(sample_views) -> None:
    kept, rag = sample_views
    newest = newest_beads(read_bead_export(SAMPLE_RIG, rig="gastown").beads).winners
    for u in kept:
        if u.kind == "bead":
            bead = newest[u.bead_id]
            # the corpus trains bead *creation*: the author's role
            assert u.role == (bead.author_role or "mayor")
            # RAG retrieves a bead for the role it is assigned to ("" = every role)
            assert rag[("beads", u.bead_id)].role == (bead.assignee_role or "")
    assert {u.role for u in kept if u.kind == "bead"} == {
        "mayor",
        "crew",
        "witness",
        "deacon",
        "boot",
    }


def test_session_document_and_formula_roles_agree(sample_views) -> None:
    kept, rag = sample_views
    collection = {"transcript": "sessions", "claude_code": "sessions"}
    collection |= {"doc": "configs", "formula": "formulas"}
    compared = 0
    for u in kept:
        if u.kind == "bead":
            continue
        unit = u.session_id if collection[u.kind] == "sessions" else u.refs[0].file
        # the corpus partitions role-agnostic artifacts as "all", RAG stores them as ""
        assert rag[(collection[u.kind], unit)].role == ("" if u.role == "all" else u.role), unit
        compared += 1
    assert compared >= 25
    roles = {unit: d.role for (c, unit), d in rag.items() if c == "sessions"}
    assert roles["ses-0022"] == "refinery"  # a role to both now
    assert "ses-0025" not in roles and "ses-0098" not in roles  # an unknown role; no role


def _rig_where_the_old_readers_disagreed(root: Path) -> Path:
    rig = make_small_rig(root / "testrig")
    beads = [
        json.loads(line) for line in (rig / ".beads" / "issues.jsonl").read_text().splitlines()
    ]
    beads[0]["created_by"] = "testrig/polecats/nux"
    older = dict(beads[1], status="open", updated_at="2025-03-01T09:00:00Z")
    no_status = {k: v for k, v in beads[2].items() if k != "status"}
    bad_priority = dict(beads[0], id="tr-d4", priority=9)
    write_jsonl(
        rig / ".beads" / "issues.jsonl", [beads[0], beads[1], older, no_status, bad_priority]
    )
    archive = rig / ".beads" / "formulas" / "archive"
    archive.mkdir()
    (archive / "mol-witness-patrol.formula.toml").write_text(
        'formula = "mol-witness-patrol"\nversion = 2\ndescription = "Survey and escalate."\n'
    )
    record = json.loads((rig / "transcripts" / "day1.jsonl").read_text())
    write_jsonl(
        rig / "transcripts" / "day2.jsonl",
        [
            dict(record, session_id="ses-2", role="polecats"),  # a directory, not a role
            dict(record, session_id="ses-3", turns=[*record["turns"], {"speaker": "x"}]),
            dict(record, session_id="ses-4", outcome=None),
        ],
    )
    return rig


def test_former_disagreements_are_decided_once(tmp_path: Path) -> None:
    rig = _rig_where_the_old_readers_disagreed(tmp_path)
    kept, ledger = _corpus_units(load_rig(rig))
    read = read_rig(rig, rig="testrig")
    rag = {(u.collection, u.key) for u in read.units}

    # required bead fields: a bead without status or with priority 9 is nobody's
    corpus_beads = {u.bead_id: u for u in kept if u.kind == "bead"}
    assert set(corpus_beads) == {k for c, k in rag if c == "beads"} == {"tr-a1", "tr-b2"}
    # duplicate ids: the newer updated_at wins in both, though the older line comes last
    assert corpus_beads["tr-b2"].refs[0].line == 2
    (bead_doc,) = (d for d in read.documents() if d.unit == "tr-b2")
    assert "status: closed" in bead_doc.text
    # role source: author for the corpus, assignee for RAG
    assert corpus_beads["tr-a1"].role == "polecat" and bead_doc.role == "witness"
    # formulas: the highest version wins, even from archive/
    (formula,) = (u for u in kept if u.kind == "formula")
    assert formula.refs[0].file.endswith("archive/mol-witness-patrol.formula.toml")
    assert {k for c, k in rag if c == "formulas"} == {formula.refs[0].file}
    # transcripts: a role directory name, a bad turn, a missing outcome are rejected by both
    assert {u.session_id for u in kept if u.kind == "transcript"} == {"ses-1"}
    assert {k for c, k in rag if c == "sessions"} == {"ses-1"}
    problems = "\n".join(map(str, read.problems))
    for expected in (
        ".beads/issues.jsonl:4: bead tr-c3 has no status",
        ".beads/issues.jsonl:5: bead tr-d4: bad field: priority=9",
        "bead tr-b2 repeats line 2; the newer version on line 2 is used",
        "transcripts/day2.jsonl:1: session ses-2: unknown role: polecats",
        "transcripts/day2.jsonl:2: session ses-3: bad field: turns[2]",
        "transcripts/day2.jsonl:3: session ses-4 has no outcome",
        "formula mol-witness-patrol version 1 is superseded by version 2",
    ):
        assert expected in problems, expected
    reasons = _final_reasons(ledger, kept)
    assert reasons[(".beads/issues.jsonl", 4)] == "missing_field"
    assert reasons[(".beads/issues.jsonl", 3)] == "superseded"
    assert reasons[("transcripts/day2.jsonl", 1)] == "unknown_role"
    assert reasons[("transcripts/day2.jsonl", 2)] == "bad_field"
