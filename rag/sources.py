"""Readers that turn a rig directory into source units (see :mod:`rag.documents`).

The files are parsed by :mod:`gastown` (one reader per Gas Town artifact, shared with the
corpus pipeline); this module decides what becomes a document. Relative to the rig root:

- ``.beads/issues.jsonl`` -> ``beads``: one unit and one document per bead id, its newest
  version (:func:`gastown.beads.newest_beads`); its sha256 is that of the bead's canonical
  JSON, so editing one bead changes one unit; its role is its assignee's.
- ``CLAUDE.md``, ``AGENTS.md`` and settings files (``rig.toml``, ``settings*.json``) anywhere
  -> ``configs``: one unit per file, chunked at markdown headings.
- ``*.formula.toml`` anywhere -> ``formulas``: one unit per formula name, its highest
  ``version`` (an ``archive/`` copy competes like any other file), rendered and chunked.
- session transcripts and Claude Code logs (other JSONL files) -> ``sessions``
  (:mod:`rag.sessions`).

Readers are tolerant but never silent: a line or file they cannot use becomes a
:class:`~rag.documents.ReadProblem` in the returned report (blank lines excepted).
"""

from __future__ import annotations

import json
import logging
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from base.errors import Node0Error
from gastown import (
    BEADS_FILE,
    DOC_NAMES,
    FORMULA_SUFFIX,
    HISTORY_DIR,
    RIG_SETTINGS,
    Bead,
    Formula,
    Problem,
    Step,
    newest_beads,
    newest_formulas,
    read_beads,
    read_document,
    read_formula,
)
from gastown.rig import load_rig
from provenance import sha256_bytes
from rag.documents import Document, ReadProblem, RigRead, SourceUnit, doc_id
from rag.roles import role_from_path
from rag.sessions import read_sessions

logger = logging.getLogger(__name__)

# superseded versions (history/ documents, archive/ configs) are not current state; VCS and tool
# directories are noise. Formulas are the exception: every copy is read, the highest version wins.
NOISE_DIRS = frozenset({".git", "node_modules", "__pycache__", ".venv"})
SKIP_DIRS = NOISE_DIRS | {HISTORY_DIR, "archive"}


def read_rig(
    root: str | Path, *, rig: str, chunk_words: int = 160, session_summary_chars: int = 1500
) -> RigRead:
    """Read every indexable source of a rig directory.

    Args:
        root: rig directory.
        rig: rig name stored with every document.
        chunk_words: maximum words of one config/formula chunk.
        session_summary_chars: characters of transcript text kept in a session summary.
    """
    root = Path(root)
    out = RigRead(rig=rig, root=root)
    files = sorted(_walk(root, NOISE_DIRS))
    current = {p for p in files if SKIP_DIRS.isdisjoint(p.relative_to(root).parts)}
    _read_beads(root, rig, out)
    formulas: list[Formula] = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        if path.name.endswith(FORMULA_SUFFIX):
            got = read_formula(root, rel, rig=rig)
            if isinstance(got, Problem):
                out.problems.append(ReadProblem.of(got))
            else:
                formulas.append(got)
        elif path in current and (path.name in DOC_NAMES or _is_settings(path)):
            _read_config(root, path, rel, rig, chunk_words, out)
    _add_formulas(root, formulas, rig, chunk_words, out)
    read_sessions(
        [p for p in files if p in current and _is_transcript(root, p)],
        root,
        rig,
        session_summary_chars,
        out,
    )
    return out


# -- walking ---------------------------------------------------------------------------------


def _walk(root: Path, skip: frozenset[str]) -> Iterator[Path]:
    for path in root.rglob("*"):
        rel_parts = path.relative_to(root).parts
        if any(part in skip for part in rel_parts):
            continue
        if path.is_file():
            yield path


def _is_settings(path: Path) -> bool:
    if path.name == RIG_SETTINGS:
        return True
    return path.suffix == ".json" and (
        path.name.startswith("settings") or path.parent.name in (".claude", "settings")
    )


def _is_transcript(root: Path, path: Path) -> bool:
    rel = path.relative_to(root)
    return path.suffix == ".jsonl" and rel.as_posix() != BEADS_FILE and ".beads" not in rel.parts


# -- beads -----------------------------------------------------------------------------------


def _dependency_ids(bead: Bead) -> list[str]:
    return [
        f"{dep.depends_on_id} ({dep.type})" if dep.type else dep.depends_on_id
        for dep in bead.dependencies
    ]


def bead_text(bead: Bead) -> str:
    """The document text of one bead: header line, fields, then its free text."""
    fields = bead.fields
    lines = [f"Bead {bead.id}: {bead.title.strip()}"]
    facts = []
    for key in ("status", "priority", "issue_type", "assignee"):
        value = fields.get(key)
        if value not in (None, ""):
            facts.append(f"{key.replace('issue_', '')}: {'P' if key == 'priority' else ''}{value}")
    if facts:
        lines.append(" | ".join(facts))
    deps = _dependency_ids(bead)
    if deps:
        lines.append("depends on: " + ", ".join(deps))
    labels = fields.get("labels")
    if isinstance(labels, list) and labels:
        lines.append("labels: " + ", ".join(str(label) for label in labels))
    for key in ("description", "design", "acceptance_criteria", "notes", "close_reason"):
        value = fields.get(key)
        if isinstance(value, str) and value.strip():
            lines.append("" if key == "description" else f"{key.replace('_', ' ')}:")
            lines.append(value.strip())
    return "\n".join(lines).strip()


def _read_beads(root: Path, rig: str, out: RigRead) -> None:
    if not (root / BEADS_FILE).is_file():
        return
    got = read_beads(root, BEADS_FILE, rig=rig)
    out.problems.extend(ReadProblem.of(p) for p in got.problems if p.reason != "blank_line")
    chosen = newest_beads(got.beads)
    for lost in chosen.superseded:
        first, then = sorted((lost.old.line, lost.winner.line))
        out.problems.append(
            ReadProblem(
                BEADS_FILE,
                then,
                f"bead {lost.old.id} repeats line {first}"
                + (
                    ""
                    if lost.identical
                    else f"; the newer version on line {lost.winner.line} is used"
                ),
            )
        )
    for bead_id, bead in chosen.winners.items():
        sha = bead.canonical_sha256
        doc = Document(
            id=doc_id(rig, "beads", bead_id),
            collection="beads",
            text=bead_text(bead),
            unit=bead_id,
            source=BEADS_FILE,
            source_sha256=sha,
            rig=rig,
            role=bead.assignee_role or "",
            bead_id=bead_id,
            updated_ts=bead.updated_ts,
            title=bead.title,
        )
        out.units.append(SourceUnit("beads", bead_id, sha, [doc]))


# -- configs and formulas --------------------------------------------------------------------


def _read_text(path: Path, rel: str, out: RigRead) -> tuple[str, str] | None:
    """A settings file's text and sha256 (settings are not a Gas Town document format)."""
    try:
        raw = path.read_bytes()
        return raw.decode("utf-8"), sha256_bytes(raw)
    except (OSError, UnicodeDecodeError) as exc:
        out.problems.append(ReadProblem(rel, None, f"unreadable: {exc}"))
        return None


def chunk_words(text: str, limit: int) -> list[str]:
    """Split text into pieces of at most ``limit`` words, keeping its line breaks.

    Whole paragraphs are packed together; a paragraph that is too long is split at line
    breaks, and a line that is too long at word boundaries.
    """
    pieces: list[str] = []
    current: list[str] = []
    words = 0

    def flush() -> None:
        nonlocal current, words
        if current:
            pieces.append("\n\n".join(current).strip())
        current, words = [], 0

    for para in re.split(r"\n\s*\n", text.strip()):
        n = len(para.split())
        if n == 0:
            continue
        if words + n > limit:
            flush()
        if n <= limit:
            current.append(para.strip())
            words += n
            continue
        pieces.extend(_chunkread_lines(para.strip().splitlines(), limit))
    flush()
    return pieces


def markdown_sections(text: str) -> list[tuple[str, str]]:
    """(heading path, body) per markdown section; text before the first heading has path ``""``."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    stack: list[tuple[int, str]] = []
    in_fence = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        match = None if in_fence else re.match(r"^(#{1,6})\s+(.*\S)\s*$", line)
        if match:
            level, title = len(match.group(1)), match.group(2).strip()
            stack = [(lvl, t) for lvl, t in stack if lvl < level] + [(level, title)]
            sections.append((" > ".join(t for _, t in stack), []))
        else:
            sections[-1][1].append(line)
    return [
        (path, "\n".join(body).strip())
        for path, body in sections
        if path or "\n".join(body).strip()
    ]


def _file_unit(
    collection: str,
    rel: str,
    rig: str,
    sha: str,
    header: str,
    chunks: list[str],
    updated_ts: float | None,
    title: str,
    *,
    role: str | None = None,
) -> SourceUnit:
    unit = SourceUnit(collection, rel, sha)
    for i, body in enumerate(chunks):
        unit.documents.append(
            Document(
                id=doc_id(rig, collection, rel, i),
                collection=collection,
                text=f"{header}\n{body}".strip(),
                unit=rel,
                source=rel,
                source_sha256=sha,
                rig=rig,
                role=role_from_path(rel) if role is None else role,
                updated_ts=updated_ts,
                title=title,
            )
        )
    return unit


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _read_config(root: Path, path: Path, rel: str, rig: str, limit: int, out: RigRead) -> None:
    if path.name in DOC_NAMES:
        doc = read_document(root, rel, rig=rig)
        if isinstance(doc, Problem):
            out.problems.append(ReadProblem.of(doc))
            return
        text, sha = doc.text, doc.sha256
    else:
        got = _read_text(path, rel, out)
        if got is None:
            return
        text, sha = got
    chunks: list[str] = []
    if path.suffix == ".md":
        for heading, body in markdown_sections(text):
            # a heading without body text lives on in its subsections' heading paths
            prefix = f"## {heading}\n" if heading else ""
            chunks.extend(f"{prefix}{piece}".strip() for piece in chunk_words(body, limit))
    else:
        try:
            data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except json.JSONDecodeError as exc:
            out.problems.append(ReadProblem(rel, exc.lineno, f"not JSON: {exc.msg}"))
            return
        except tomllib.TOMLDecodeError as exc:
            out.problems.append(ReadProblem(rel, None, f"not TOML: {exc}"))
            return
        rendered = render_structure(data)
        chunks = _chunkread_lines(rendered, limit)
    chunks = [c for c in chunks if c]
    if not chunks:
        out.problems.append(ReadProblem(rel, None, "empty file, nothing to index"))
        return
    out.units.append(_file_unit("configs", rel, rig, sha, f"[{rel}]", chunks, _mtime(path), rel))


def render_structure(value: Any, indent: int = 0) -> list[str]:
    """Readable ``key: value`` lines for parsed TOML/JSON (lists of tables as ``-`` items)."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{key}:")
                lines.extend(render_structure(item, indent + 1))
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            sub = render_structure(item, indent + 1)
            if sub:
                lines.append(f"{pad}- {sub[0].strip()}")
                lines.extend(sub[1:])
    else:
        lines.append(f"{pad}{_scalar(value)}")
    return lines


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        return " ".join(value.split())
    return json.dumps(value) if isinstance(value, bool | type(None)) else str(value)


def _chunkread_lines(lines: list[str], limit: int) -> list[str]:
    chunks: list[str] = []
    current: list[str] = []
    words = 0
    for line in lines:
        n = len(line.split())
        if current and words + n > limit:
            chunks.append("\n".join(current))
            current, words = [], 0
        if n > limit:
            tokens = line.split()
            chunks.extend(" ".join(tokens[i : i + limit]) for i in range(0, n, limit))
            continue
        current.append(line)
        words += n
    if current:
        chunks.append("\n".join(current))
    return chunks


def _add_formulas(root: Path, formulas: list[Formula], rig: str, limit: int, out: RigRead) -> None:
    """One unit per formula name: its newest version; the older copies are reported."""
    chosen = newest_formulas(formulas)
    for lost in chosen.superseded:
        old, win = lost.old, lost.winner
        out.problems.append(
            ReadProblem(
                old.file,
                None,
                f"formula {old.name} version {old.version_number} is superseded by version "
                f"{win.version_number} in {win.file}",
            )
        )
    for formula in sorted(chosen.winners.values(), key=lambda f: f.file):
        out.units.append(_formula_unit(root, formula, rig, limit))


def _formula_unit(root: Path, formula: Formula, rig: str, limit: int) -> SourceUnit:
    rel = formula.file
    header = f"Formula {formula.name} [{rel}]\n" + " ".join(formula.description.split())
    lines = []
    for key, value in formula.data.items():
        if key in ("formula", "name", "description"):
            continue
        if key == "steps" and isinstance(value, list):
            lines.extend(_step_line(step) for step in formula.steps)
        else:
            lines.extend(render_structure({key: value}))
    chunks = _chunkread_lines(lines, limit) or [""]
    return _file_unit(
        "formulas",
        rel,
        rig,
        formula.sha256,
        header.strip(),
        chunks,
        _mtime(root / rel),
        formula.name,
        role=formula.role or "",
    )


def _step_line(step: Step) -> str:
    line = f"step {step.id}: {_scalar(step.title)}"
    if step.description:
        line += f" - {_scalar(step.description)}"
    if step.needs:
        line += f" (after {', '.join(step.needs)})"
    return line


def read_rig_name(root: str | Path) -> str | None:
    """The rig's declared name (``[rig] name`` of rig.toml), None if absent or unreadable."""
    try:
        return load_rig(root).declared_name
    except Node0Error:
        return None
