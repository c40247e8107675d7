"""Rig readers: what becomes a document, and that nothing unreadable is dropped silently."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from rag.roles import role_from_path
from rag.sources import chunk_words, markdown_sections, read_rig, read_rig_name
from tests.fixtures import SAMPLE_RIG, make_small_rig


def _problems(read) -> list[str]:
    return [str(p) for p in read.problems]


def test_sample_rig_units_and_reported_problems():
    read = read_rig(SAMPLE_RIG, rig="gastown")
    units = Counter(u.collection for u in read.units)
    # 46 beads with a title (gt-zz02 has none; repeats collapse to one unit per id)
    assert units["beads"] == 46
    # CLAUDE.md, AGENTS.md, polecats/CLAUDE.md, rig.toml; history/ is superseded and skipped
    assert {u.key for u in read.units if u.collection == "configs"} == {
        "CLAUDE.md",
        "AGENTS.md",
        "polecats/CLAUDE.md",
        "rig.toml",
    }
    # four valid formulas; archive/ is skipped, mol-release is broken TOML
    assert {u.key for u in read.units if u.collection == "formulas"} == {
        f".beads/formulas/mol-{n}.formula.toml"
        for n in ("polecat-work", "witness-patrol", "deacon-patrol", "plan-epic")
    }
    problems = "\n".join(_problems(read))
    for expected in (
        ".beads/issues.jsonl:21: not JSON",
        "bead gt-zz02 has no title",
        "bead gt-n84s repeats line 2; the newer version on line 49 is used",
        "bead gt-k1sh repeats line 11",
        "mol-release.formula.toml: not TOML",
        "claude-sessions/3b1f0c2a-5d6e-4f70-8a91-0b2c3d4e5f60.jsonl:13: not JSON",
        "transcripts/2026-03-01.jsonl:6: not JSON",
        "session ses-0021 belongs to rig 'beads'",
        "session ses-0003 repeats transcripts/2026-03-01.jsonl:3",
        "transcripts/2026-03-02.jsonl:15: not UTF-8",
    ):
        assert expected in problems, expected
    sessions = {u.key for u in read.units if u.collection == "sessions"}
    assert "ses-0021" not in sessions and "ses-0003" in sessions
    assert "3b1f0c2a-5d6e-4f70-8a91-0b2c3d4e5f60" in sessions  # Claude Code log


def test_newer_bead_version_wins_and_metadata():
    read = read_rig(SAMPLE_RIG, rig="gastown")
    docs = {d.id: d for d in read.documents()}
    bead = docs["gastown/beads/gt-n84s"]
    assert "status: closed" in bead.text  # line 49 (newer) over line 2
    assert bead.bead_id == "gt-n84s" and bead.updated_ts is not None
    assert bead.source == ".beads/issues.jsonl" and len(bead.source_sha256) == 64
    assert docs["gastown/configs/polecats/CLAUDE.md#0"].role == "polecat"
    assert docs["gastown/configs/CLAUDE.md#0"].role == ""
    assert docs["gastown/formulas/.beads/formulas/mol-witness-patrol.formula.toml#0"].role == (
        "witness"
    )
    assert docs["gastown/sessions/7c9d2e1f-0a3b-4c5d-9e8f-1a2b3c4d5e6f"].role == "mayor"
    assert docs["gastown/sessions/ses-0001"].bead_id == "gt-gtak"
    meta = bead.metadata()
    assert set(meta) >= {"rig", "role", "bead_id", "updated_at", "source_sha256"}
    assert all(v is not None for v in meta.values())


def test_bead_sha_depends_only_on_that_bead(tmp_path: Path):
    rig = make_small_rig(tmp_path / "r")
    before = {u.key: u.source_sha256 for u in read_rig(rig, rig="r").units}
    path = rig / ".beads" / "issues.jsonl"
    beads = [json.loads(line) for line in path.read_text().splitlines()]
    beads[1]["status"] = "open"
    path.write_text("".join(json.dumps(b) + "\n" for b in beads))
    after = {u.key: u.source_sha256 for u in read_rig(rig, rig="r").units}
    assert {k for k in before if before[k] != after[k]} == {"tr-b2"}


def test_rig_name_from_rig_toml(tmp_path: Path):
    assert read_rig_name(SAMPLE_RIG) == "gastown"
    assert read_rig_name(tmp_path) is None


def test_chunks_respect_the_word_limit():
    text = "\n\n".join(
        " ".join(f"w{i}_{j}" for j in range(n)) for i, n in enumerate([3, 50, 7, 130, 1, 64])
    )
    for limit in (5, 16, 64, 160):
        pieces = chunk_words(text, limit)
        assert all(0 < len(p.split()) <= limit for p in pieces)
        assert " ".join(" ".join(pieces).split()) == " ".join(text.split())  # nothing lost


def test_markdown_sections_ignore_headings_in_code_fences():
    text = "intro\n# A\nbody a\n```\n# not a heading\n```\n## B\nbody b\n"
    sections = markdown_sections(text)
    assert [s[0] for s in sections] == ["", "A", "A > B"]
    assert "# not a heading" in sections[1][1]


def test_role_from_path():
    assert role_from_path("polecats/nux/CLAUDE.md") == "polecat"
    assert role_from_path("CLAUDE.md") == ""
    assert role_from_path("/home/x/gt/gastown/witness", is_dir=True) == "witness"
