from __future__ import annotations

import json

import pytest

from base.errors import DataError
from corpus.config import CleanConfig
from corpus.ledger import Ledger
from corpus.readers import read_claude_code, read_transcripts
from corpus.readers.claude_code import role_from_cwd
from corpus.recency import apply_recency, find_reversion
from corpus.units import Unit
from dataload.jsonl_reader import read_jsonl
from dataload.schema import ROLES, SFTExample
from gastown.rig import load_rig


def _session(**over) -> dict:
    base = {
        "schema": "gastown.transcript/1",
        "session_id": "s1",
        "rig": "r",
        "role": "polecat",
        "outcome": "success",
        "turns": [{"speaker": "user", "text": "go"}, {"speaker": "assistant", "text": "$ gt done"}],
    }
    base.update(over)
    return base


def test_transcript_reader_accounts_for_every_line(tmp_path) -> None:
    (tmp_path / "t.jsonl").write_bytes(
        b"\n".join(
            [
                json.dumps(_session()).encode(),
                b"",
                b"{not json",
                b"\xff\xfe",
                json.dumps(_session(role="mayorx")).encode(),
                json.dumps(_session(outcome=None)).encode(),
                json.dumps(_session(turns=[{"speaker": "robot", "text": "x"}])).encode(),
                b"[1, 2]",
            ]
        )
        + b"\n"
    )
    ledger = Ledger()
    units = read_transcripts(load_rig(tmp_path), ["t.jsonl"], ledger, list(ROLES))
    assert len(units) == 1
    ledger.mark(units[0].refs, "accepted", "written")
    got = [(ref.line, final.status, final.reason) for ref, final, _ in ledger.dispositions()]
    assert got == [
        (1, "accepted", "written"),
        (2, "rejected", "blank_line"),
        (3, "quarantined", "invalid_json"),
        (4, "quarantined", "invalid_utf8"),
        (5, "quarantined", "unknown_role"),
        (6, "quarantined", "missing_field"),
        (7, "quarantined", "bad_field"),
        (8, "quarantined", "not_an_object"),
    ]
    assert ledger.reconciliation()["by_kind"]["transcript"]["read"] == 8


def test_unaccounted_record_fails_closed(tmp_path) -> None:
    (tmp_path / "t.jsonl").write_text(json.dumps(_session()) + "\n")
    ledger = Ledger()
    read_transcripts(load_rig(tmp_path), ["t.jsonl"], ledger, list(ROLES))
    with pytest.raises(DataError, match="without an outcome"):
        ledger.dispositions()


def test_claude_code_role_and_turns(sample_rig) -> None:
    assert role_from_cwd("/home/x/gt/gastown/polecats/nux") == "polecat"
    assert role_from_cwd("/home/x/gt/mayor") == "mayor"
    assert role_from_cwd("/tmp/elsewhere") is None
    ledger = Ledger()
    rig = load_rig(sample_rig)
    files = sorted(
        p.relative_to(sample_rig).as_posix()
        for p in (sample_rig / "claude-sessions").glob("*.jsonl")
    )
    units = read_claude_code(rig, files, ledger, unknown_outcome="sft")
    assert sorted(u.role for u in units) == ["mayor", "polecat", "witness"]
    polecat = next(u for u in units if u.role == "polecat")
    assert polecat.bead_id and polecat.bead_id.startswith("gt-")
    assert any("\n$ gt prime" in t for s, t in polecat.turns if s == "assistant")


def _doc(version: str, text: str) -> Unit:
    from corpus.units import RecordRef

    return Unit(
        kind="doc",
        rig="r",
        refs=[RecordRef("r", f"v{version}", 1, 1, "doc")],
        role="all",
        artifact="doc:CLAUDE.md",
        version=(version,),
        turns=[],
        sha256=version * 64,
        content=text,
    )


def test_reversion_detected_only_when_a_change_is_undone() -> None:
    v1 = "a\nb\nc"
    v2 = "a\nb\nc\nBAD RULE"
    assert find_reversion([_doc("1", v1), _doc("2", v2), _doc("3", v1)], CleanConfig())
    assert (
        find_reversion([_doc("1", v1), _doc("2", v2), _doc("3", v2 + "\nd")], CleanConfig()) is None
    )
    ledger = Ledger()
    units = [_doc("1", v1), _doc("2", v2), _doc("3", v1)]
    for u in units:
        ledger.read(u.refs[0])
    kept, review = apply_recency(units, ledger, CleanConfig())
    assert kept == [] and [r["reverting_version"] for r in review] == ["r:v3:1"]
    final = {str(ref): o.reason for ref, o, _ in ledger.dispositions()}
    assert final == {
        "r:v1:1": "superseded",
        "r:v2:1": "superseded",
        "r:v3:1": "reversion_needs_review",
    }
    approved = CleanConfig(approved_reversions=["3" * 64])
    kept, review = apply_recency(units, Ledger_with(units), approved)
    assert [u.version for u in kept] == [("3",)] and review == []


def Ledger_with(units: list[Unit]) -> Ledger:  # noqa: N802
    ledger = Ledger()
    for u in units:
        ledger.read(u.refs[0])
    return ledger


def test_jsonl_reader_reports_malformed_lines(tmp_path) -> None:
    good = {
        "id": "sft-0123456789abcdef",
        "role": "crew",
        "task": "code-change",
        "turns": [{"speaker": "user", "text": "x"}, {"speaker": "assistant", "text": "y"}],
        "quality_score": 1.0,
        "provenance": {
            "source_kind": "transcript",
            "file": "t.jsonl",
            "line": 1,
            "line_end": 1,
            "rig": "r",
            "role": "crew",
            "sha256": "0" * 64,
        },
    }
    bad_shape = dict(
        good, turns=[{"speaker": "assistant", "text": "y"}, {"speaker": "user", "text": "x"}]
    )
    p = tmp_path / "d.jsonl"
    p.write_text(
        "\n".join(
            [json.dumps(good), "{oops", json.dumps(bad_shape), json.dumps(dict(good, extra=1))]
        )
        + "\n"
    )
    res = read_jsonl(p, SFTExample)
    assert len(res.records) == 1 and res.lines_read == 4
    assert [(e.line, e.reason.split(":")[0]) for e in res.errors] == [
        (2, "invalid JSON"),
        (3, "schema"),
        (4, "schema"),
    ]
    with pytest.raises(DataError, match="3 malformed"):
        read_jsonl(p, SFTExample, strict=True)
