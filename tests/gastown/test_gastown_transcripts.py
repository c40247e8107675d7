"""``gastown.transcript/1``: one session or one typed problem per line."""

from __future__ import annotations

from pathlib import Path

from gastown import read_transcripts
from tests.fixtures import SAMPLE_RIG, write_jsonl


def _session(**over) -> dict:
    session = {
        "schema": "gastown.transcript/1",
        "session_id": "s1",
        "rig": "r",
        "role": "polecat",
        "outcome": "success",
        "turns": [{"speaker": "user", "text": "go"}, {"speaker": "assistant", "text": "$ gt done"}],
    }
    session.update(over)
    return session


def test_every_line_is_a_session_or_a_typed_problem(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "t.jsonl",
        [
            _session(bead_id="gt-1", task="code-change", agent="nux", failure_mode=None),
            _session(schema="gastown.transcript/0"),
            _session(role="mayorx"),
            _session(role="polecats"),  # a directory name, not a role
            _session(role="all"),  # a dataset partition, not an agent
            _session(outcome=None),
            _session(outcome="maybe"),
            _session(turns=[]),
            _session(turns=[{"speaker": "robot", "text": "x"}]),
            _session(turns=[{"speaker": "user", "text": 3}]),
            _session(bead_id=17),
            _session(ended_at="soon"),
            _session(role="refinery"),
            "",
        ],
    )
    got = read_transcripts(tmp_path, "t.jsonl")
    assert [t.line for t in got.transcripts] == [1, 13]
    assert [(p.line, p.reason, p.detail) for p in got.problems] == [
        (2, "unknown_schema", "'gastown.transcript/0'"),
        (3, "unknown_role", "mayorx"),
        (4, "unknown_role", "polecats"),
        (5, "unknown_role", "all"),
        (6, "missing_field", "outcome"),
        (7, "bad_field", "outcome='maybe'"),
        (8, "missing_field", "turns"),
        (9, "bad_field", "turns[0]"),
        (10, "bad_field", "turns[0]"),
        (11, "bad_field", "bead_id"),
        (12, "bad_field", "ended_at='soon'"),
        (14, "blank_line", ""),
    ]
    assert got.problems[4].message == "session s1 has no outcome"
    first = got.transcripts[0]
    assert (first.bead_id, first.task, first.agent, first.failure_mode) == (
        "gt-1",
        "code-change",
        "nux",
        None,
    )
    assert [(t.speaker, t.text) for t in first.turns] == [
        ("user", "go"),
        ("assistant", "$ gt done"),
    ]


def test_version_is_the_session_time_then_the_position(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "t.jsonl",
        [
            _session(ended_at="2025-03-01T12:00:00Z"),
            _session(started_at="2025-03-02T09:00:00+01:00"),  # no ended_at: started_at
            _session(),  # no time: oldest
        ],
    )
    a, b, c = read_transcripts(tmp_path, "t.jsonl").transcripts
    assert c.version < a.version < b.version
    assert b.version[0] == "2025-03-02T08:00:00.000000Z"


def test_sample_transcripts() -> None:
    got = read_transcripts(SAMPLE_RIG, "transcripts/2026-03-02.jsonl")
    assert [(p.line, p.reason) for p in got.problems] == [
        (4, "missing_field"),
        (15, "invalid_utf8"),
    ]
    by_id = {t.session_id: t for t in got.transcripts}
    assert by_id["ses-0022"].role == "refinery"  # a Gas Town role, not an unknown one
    assert by_id["ses-0021"].rig == "beads"  # the record's own rig, for the consumer to judge
    assert by_id["ses-0003"].line == 14 and len(by_id["ses-0003"].sha256) == 64
