"""Claude Code logs: one session per file, one event or one typed problem per line."""

from __future__ import annotations

from pathlib import Path

from gastown import jsonl_format, read_claude_log
from tests.fixtures import SAMPLE_RIG, write_jsonl

POLECAT_LOG = "claude-sessions/3b1f0c2a-5d6e-4f70-8a91-0b2c3d4e5f60.jsonl"


def _event(kind: str = "user", content=None, **over) -> dict:
    event = {
        "type": kind,
        "sessionId": "abc",
        "cwd": "/home/x/gt/gastown/crew/max",
        "timestamp": "2025-03-01T10:00:00Z",
        "message": {"role": kind, "content": "hello" if content is None else content},
    }
    event.update(over)
    return event


def test_sample_polecat_log() -> None:
    got = read_claude_log(SAMPLE_RIG, POLECAT_LOG, rig="gastown")
    session = got.session
    assert session is not None
    assert session.session_id == "3b1f0c2a-5d6e-4f70-8a91-0b2c3d4e5f60"
    assert session.role == "polecat" and session.title == "Fix gt mail inbox archived threads"
    assert (session.rig, session.file) == ("gastown", POLECAT_LOG)
    assert [(p.line, p.reason) for p in got.problems] == [(13, "invalid_json")]
    assert len(session.events) == 12 and len(session.turns) == 11
    kinds = {b.kind for e in session.turns for b in e.blocks}
    assert kinds == {"text", "thinking", "tool_use", "tool_result"}
    bash = next(b for e in session.turns for b in e.blocks if b.kind == "tool_use")
    assert bash.tool == "Bash" and "command" in bash.input
    assert session.version[0] == "2025-02-26T20:05:30.000000Z"  # its last event
    assert jsonl_format(SAMPLE_RIG, POLECAT_LOG) == "claude_code"
    assert jsonl_format(SAMPLE_RIG, "transcripts/2026-03-01.jsonl") == "transcript"


def test_malformed_events_are_typed_problems(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "s.jsonl",
        [
            {"type": "summary", "summary": "Sweep worktrees"},
            _event(cwd="/home/x/gt/gastown/refinery"),
            _event("assistant", [{"type": "text", "text": "ok"}, {"type": "thinking"}]),
            _event("assistant", [{"type": "server_tool_use", "name": "web"}]),
            _event("assistant", [{"type": "tool_use", "name": "Bash", "input": "ls"}]),
            _event("user", [{"type": "tool_result", "content": {"x": 1}}]),
            _event(message="hello"),
            {"sessionId": "abc"},
            _event(timestamp="yesterday"),
            _event(cwd=["/"]),
            {"type": "file-history-snapshot"},
        ],
    )
    got = read_claude_log(tmp_path, "s.jsonl", rig="r")
    assert [(p.line, p.reason, p.detail) for p in got.problems] == [
        (4, "bad_field", "message.content"),
        (5, "bad_field", "message.content"),
        (6, "bad_field", "message.content"),
        (7, "bad_field", "message.content"),
        (8, "missing_field", "type"),
        (9, "bad_field", "timestamp='yesterday'"),
        (10, "bad_field", "cwd"),
    ]
    session = got.session
    assert session is not None
    assert [e.line for e in session.events] == [1, 2, 3, 11]
    assert [e.line for e in session.turns] == [2, 3]
    assert session.role == "refinery"  # the first working directory
    assert session.title == "Sweep worktrees" and session.session_id == "abc"


def test_session_id_from_file_name_and_no_role(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "f00d.jsonl", [_event(sessionId=None, cwd="/tmp/elsewhere")])
    session = read_claude_log(tmp_path, "f00d.jsonl", rig="r").session
    assert session is not None and session.session_id == "f00d" and session.role is None
    write_jsonl(tmp_path / "bad.jsonl", ["{oops", ""])
    got = read_claude_log(tmp_path, "bad.jsonl", rig="r")
    assert got.session is None and [p.reason for p in got.problems] == [
        "invalid_json",
        "blank_line",
    ]
