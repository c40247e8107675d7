"""bd's export: one bead or one typed problem per line; the newest version of an id wins."""

from __future__ import annotations

import json
from pathlib import Path

from gastown import BEADS_FILE, newest_beads, read_beads
from tests.fixtures import SAMPLE_RIG, write_jsonl


def _bead(**over) -> dict:
    bead = {
        "id": "tr-a1",
        "title": "Retry gt mail send",
        "status": "open",
        "priority": 1,
        "issue_type": "bug",
        "updated_at": "2025-03-01T10:00:00Z",
        "created_by": "testrig/mayor",
    }
    bead.update(over)
    return {k: v for k, v in bead.items() if v is not None}


def _export(root: Path, rows: list) -> Path:
    (root / ".beads").mkdir(parents=True, exist_ok=True)
    write_jsonl(root / BEADS_FILE, rows)
    return root


def test_every_line_is_a_bead_or_a_typed_problem(tmp_path: Path) -> None:
    root = _export(
        tmp_path,
        [
            _bead(),
            "",
            "{not json",
            "[1, 2]",
            _bead(id="tr-b2", title=None),
            _bead(id="tr-c3", priority=7),
            _bead(id="tr-d4", priority=True),
            _bead(id="tr-e5", updated_at="last tuesday"),
            _bead(id="tr-f6", dependencies=[{"type": "blocks"}]),
            _bead(id=None),
            _bead(id="tr-g7", dependencies=[{"depends_on_id": "tr-a1", "type": "blocks"}]),
        ],
    )
    (root / BEADS_FILE).write_bytes((root / BEADS_FILE).read_bytes() + b"\xff\xfe\n")
    got = read_beads(root, rig="testrig")
    assert [b.line for b in got.beads] == [1, 11]
    assert [(p.line, p.reason, p.detail, p.malformed) for p in got.problems] == [
        (2, "blank_line", "", False),
        (3, "invalid_json", "Expecting property name enclosed in double quotes at column 2", True),
        (4, "not_an_object", "list", True),
        (5, "missing_field", "title", True),
        (6, "bad_field", "priority=7", True),
        (7, "bad_field", "priority=True", True),
        (8, "bad_field", "updated_at='last tuesday'", True),
        (9, "bad_field", "dependencies", True),
        (10, "missing_field", "id", True),
        (12, "invalid_utf8", "byte 0", True),
    ]
    assert got.problems[3].message == "bead tr-b2 has no title"
    assert str(got.problems[4]) == ".beads/issues.jsonl:6: bead tr-c3: bad field: priority=7"
    dep = got.beads[1].dependencies[0]
    assert (dep.depends_on_id, dep.type) == ("tr-a1", "blocks")


def test_bead_provenance_and_roles(tmp_path: Path) -> None:
    root = _export(
        tmp_path,
        [_bead(assignee="testrig/polecats/nux"), _bead(id="tr-b2", created_by="steve")],
    )
    first, second = read_beads(root, rig="testrig").beads
    assert (first.rig, first.file, first.line) == ("testrig", BEADS_FILE, 1)
    assert first.author_role == "mayor" and first.assignee_role == "polecat"
    assert second.author_role is None and second.assignee_role is None
    assert len(first.sha256) == 64 and first.fields["title"] == "Retry gt mail send"


def test_newest_updated_at_wins_whatever_the_line_order(tmp_path: Path) -> None:
    root = _export(
        tmp_path,
        [
            _bead(status="closed", updated_at="2025-03-02T10:00:00Z"),  # newest, written first
            _bead(status="in_progress", updated_at="2025-03-01T12:00:00Z"),
            # 11:00 UTC is newer than 12:00+02:00 (10:00 UTC): times compare, not strings
            _bead(id="tr-b2", status="open", updated_at="2025-03-01T11:00:00Z"),
            _bead(id="tr-b2", status="closed", updated_at="2025-03-01T12:00:00+02:00"),
            # same time: the later line wins
            _bead(id="tr-c3", status="open"),
            _bead(id="tr-c3", status="blocked"),
        ],
    )
    chosen = newest_beads(read_beads(root, rig="testrig").beads)
    assert {k: (b.line, b.status) for k, b in chosen.winners.items()} == {
        "tr-a1": (1, "closed"),
        "tr-b2": (3, "open"),
        "tr-c3": (6, "blocked"),
    }
    assert sorted((s.old.line, s.winner.line, s.identical) for s in chosen.superseded) == [
        (2, 1, False),
        (4, 3, False),
        (5, 6, False),
    ]


def test_identical_repeat_is_flagged_and_content_hash_ignores_layout(tmp_path: Path) -> None:
    bead = _bead()
    root = _export(tmp_path, [json.dumps(bead), json.dumps(bead, indent=None, sort_keys=True)])
    beads = read_beads(root, rig="testrig").beads
    assert beads[0].sha256 != beads[1].sha256  # raw bytes differ
    assert beads[0].canonical_sha256 == beads[1].canonical_sha256
    (lost,) = newest_beads(beads).superseded
    assert lost.identical and lost.winner.line == 2


def test_sample_export() -> None:
    got = read_beads(SAMPLE_RIG, rig="gastown")
    assert len(got.beads) + len(got.problems) == 51  # every line accounted for
    assert [(p.line, p.reason) for p in got.problems] == [
        (21, "invalid_json"),
        (34, "missing_field"),
    ]
    chosen = newest_beads(got.beads)
    assert len(chosen.winners) == 46
    assert chosen.winners["gt-n84s"].line == 49 and chosen.winners["gt-n84s"].status == "closed"
    assert {(s.old.line, s.winner.line, s.identical) for s in chosen.superseded} == {
        (2, 49, False),
        (9, 50, False),
        (11, 51, True),
    }


def test_missing_file_is_one_problem(tmp_path: Path) -> None:
    got = read_beads(tmp_path, rig="testrig")
    (problem,) = got.problems
    assert problem.reason == "unreadable" and problem.whole_file and not got.beads
