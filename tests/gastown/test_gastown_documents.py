"""Convention documents and their history versions: one record or one typed problem per file."""

from __future__ import annotations

from pathlib import Path

from gastown import Problem, read_document
from gastown.documents import CURRENT, ConventionDoc
from tests.fixtures import SAMPLE_RIG


def _doc(root: Path, rel: str) -> ConventionDoc:
    got = read_document(root, rel, rig="gastown")
    assert isinstance(got, ConventionDoc), got
    return got


def test_current_and_history_versions_of_the_sample() -> None:
    current = _doc(SAMPLE_RIG, "polecats/CLAUDE.md")
    old = _doc(SAMPLE_RIG, "history/polecats/CLAUDE.md/20260212T100000Z.md")
    assert current.doc_path == old.doc_path == "polecats/CLAUDE.md"
    assert current.stamp == CURRENT and current.is_current and not old.is_current
    assert old.stamp == "20260212T100000Z" and old.version < current.version
    assert current.role == old.role == "polecat"
    assert _doc(SAMPLE_RIG, "CLAUDE.md").role is None  # rig-wide: every role
    assert current.n_lines == current.text.count("\n") and len(current.sha256) == 64


def test_problems(tmp_path: Path) -> None:
    (tmp_path / "history" / "CLAUDE.md").mkdir(parents=True)
    (tmp_path / "history" / "CLAUDE.md" / "yesterday.md").write_text("# old\n")
    (tmp_path / "history" / "orphan.md").write_text("# old\n")
    (tmp_path / "CLAUDE.md").write_text("  \n\n")
    (tmp_path / "AGENTS.md").write_bytes(b"# Agents\n\xff\n")
    got = {
        rel: read_document(tmp_path, rel, rig="r")
        for rel in (
            "history/CLAUDE.md/yesterday.md",
            "history/orphan.md",
            "CLAUDE.md",
            "AGENTS.md",
            "missing/CLAUDE.md",
        )
    }
    assert all(isinstance(p, Problem) and p.whole_file for p in got.values())
    assert {rel: (p.reason, p.malformed) for rel, p in got.items()} == {
        "history/CLAUDE.md/yesterday.md": ("bad_history_name", True),
        "history/orphan.md": ("bad_history_name", True),
        "CLAUDE.md": ("empty_file", False),
        "AGENTS.md": ("invalid_utf8", True),
        "missing/CLAUDE.md": ("unreadable", True),
    }
    assert (got["AGENTS.md"].line, got["AGENTS.md"].line_end) == (1, 2)
    assert str(got["AGENTS.md"]) == "AGENTS.md: not UTF-8: byte 9"


def test_history_dir_is_configurable(tmp_path: Path) -> None:
    (tmp_path / "old" / "crew" / "CLAUDE.md").mkdir(parents=True)
    rel = "old/crew/CLAUDE.md/20260101T000000Z.md"
    (tmp_path / rel).write_text("# Crew\n")
    doc = read_document(tmp_path, rel, rig="r", history_dir="old")
    assert isinstance(doc, ConventionDoc)
    assert (doc.doc_path, doc.stamp, doc.role) == ("crew/CLAUDE.md", "20260101T000000Z", "crew")
