"""Readers that turn a rig directory into source units (see :mod:`rag.documents`).

What is read, relative to the rig root:

- ``.beads/issues.jsonl`` -> ``beads``: one unit and one document per bead (one JSON object a
  line); its sha256 is that of the bead's canonical JSON, so editing one bead changes one unit.
- ``CLAUDE.md``, ``AGENTS.md`` and settings JSON files anywhere -> ``configs``: one unit per file,
  chunked at markdown headings.
- ``*.formula.toml`` anywhere -> ``formulas``: one unit per file, rendered as text and chunked.
- session transcripts (JSONL files of turns) -> ``sessions``: one unit and one summary document
  per session id.

Readers are tolerant but never silent: a line or file they cannot use becomes a
:class:`~rag.documents.ReadProblem` in the returned report.
"""

from __future__ import annotations

import json
import logging
import re
import tomllib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from provenance import sha256_bytes, sha256_json
from rag.documents import (
    Document,
    ReadProblem,
    RigRead,
    SourceUnit,
    doc_id,
    parse_timestamp,
    read_lines,
)
from rag.roles import ROLE_DIRS, role_from_path
from rag.sessions import read_sessions

logger = logging.getLogger(__name__)

BEADS_FILE = Path(".beads") / "issues.jsonl"
CONFIG_NAMES = frozenset({"CLAUDE.md", "AGENTS.md"})
# superseded versions (history/, archive/) are not current state; VCS and tool dirs are noise
SKIP_DIRS = frozenset({".git", "node_modules", "__pycache__", ".venv", "history", "archive"})
RIG_SETTINGS = "rig.toml"


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
    files = sorted(_walk(root))
    _read_beads(root, rig, out)
    for path in files:
        rel = path.relative_to(root).as_posix()
        if path.name in CONFIG_NAMES or _is_settings(path):
            _read_config(path, rel, rig, chunk_words, out)
        elif path.name.endswith(".formula.toml"):
            _read_formula(path, rel, rig, chunk_words, out)
    read_sessions(
        [p for p in files if _is_transcript(root, p)], root, rig, session_summary_chars, out
    )
    return out


# -- walking ---------------------------------------------------------------------------------


def _walk(root: Path) -> Iterator[Path]:
    for path in root.rglob("*"):
        rel_parts = path.relative_to(root).parts
        if any(part in SKIP_DIRS for part in rel_parts):
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
    if path.suffix != ".jsonl" or path.relative_to(root) == BEADS_FILE:
        return False
    return ".beads" not in path.relative_to(root).parts


# -- beads -----------------------------------------------------------------------------------


def _role_of_assignee(assignee: Any) -> str:
    if not isinstance(assignee, str):
        return ""
    for part in reversed(re.split(r"[/:]", assignee)):
        if part in ROLE_DIRS:
            return ROLE_DIRS[part]
    return ""


def _dependency_ids(deps: Any) -> list[str]:
    out = []
    for dep in deps if isinstance(deps, list) else []:
        if isinstance(dep, str):
            out.append(dep)
        elif isinstance(dep, dict):
            target = dep.get("depends_on_id") or dep.get("id") or dep.get("target")
            kind = dep.get("type")
            if target:
                out.append(f"{target} ({kind})" if kind else str(target))
    return out


def bead_text(bead: dict[str, Any]) -> str:
    """The document text of one bead: header line, fields, then its free text."""
    lines = [f"Bead {bead.get('id')}: {bead.get('title', '').strip()}"]
    facts = []
    for key in ("status", "priority", "issue_type", "assignee"):
        value = bead.get(key)
        if value not in (None, ""):
            facts.append(f"{key.replace('issue_', '')}: {'P' if key == 'priority' else ''}{value}")
    if facts:
        lines.append(" | ".join(facts))
    deps = _dependency_ids(bead.get("dependencies"))
    if deps:
        lines.append("depends on: " + ", ".join(deps))
    labels = bead.get("labels")
    if isinstance(labels, list) and labels:
        lines.append("labels: " + ", ".join(str(label) for label in labels))
    for key in ("description", "design", "acceptance_criteria", "notes", "close_reason"):
        value = bead.get(key)
        if isinstance(value, str) and value.strip():
            lines.append("" if key == "description" else f"{key.replace('_', ' ')}:")
            lines.append(value.strip())
    return "\n".join(lines).strip()


def _read_beads(root: Path, rig: str, out: RigRead) -> None:
    path = root / BEADS_FILE
    if not path.is_file():
        return
    rel = BEADS_FILE.as_posix()
    beads: dict[str, tuple[int, dict[str, Any]]] = {}
    for lineno, line in read_lines(path, rel, out):
        try:
            bead = json.loads(line)
        except json.JSONDecodeError as exc:
            out.problems.append(ReadProblem(rel, lineno, f"not JSON: {exc.msg}"))
            continue
        if not isinstance(bead, dict) or not _nonempty(bead.get("id")):
            out.problems.append(ReadProblem(rel, lineno, "not a bead object with a string id"))
            continue
        if not _nonempty(bead.get("title")):
            out.problems.append(ReadProblem(rel, lineno, f"bead {bead['id']} has no title"))
            continue
        previous = beads.get(bead["id"])
        if previous is not None:
            newer = _bead_time(bead) >= _bead_time(previous[1])
            same = previous[1] == bead
            out.problems.append(
                ReadProblem(
                    rel,
                    lineno,
                    f"bead {bead['id']} repeats line {previous[0]}"
                    + (
                        ""
                        if same
                        else f"; the {'newer' if newer else 'older'} version on line "
                        f"{lineno if newer else previous[0]} is used"
                    ),
                )
            )
            if not newer or same:
                continue
        beads[bead["id"]] = (lineno, bead)
    for bead_id, (_, bead) in sorted(beads.items()):
        key = bead_id
        sha = sha256_json(bead)
        doc = Document(
            id=doc_id(rig, "beads", key),
            collection="beads",
            text=bead_text(bead),
            unit=key,
            source=rel,
            source_sha256=sha,
            rig=rig,
            role=_role_of_assignee(bead.get("assignee")),
            bead_id=bead_id,
            updated_ts=parse_timestamp(bead.get("updated_at"))
            or parse_timestamp(bead.get("created_at")),
            title=str(bead.get("title", "")),
        )
        out.units.append(SourceUnit("beads", key, sha, [doc]))


def _nonempty(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _bead_time(bead: dict[str, Any]) -> float:
    return parse_timestamp(bead.get("updated_at")) or parse_timestamp(bead.get("created_at")) or 0.0


# -- configs and formulas --------------------------------------------------------------------


def _read_text(path: Path, rel: str, out: RigRead) -> tuple[str, str] | None:
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
                role=role_from_path(rel),
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


def _read_config(path: Path, rel: str, rig: str, limit: int, out: RigRead) -> None:
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


def _read_formula(path: Path, rel: str, rig: str, limit: int, out: RigRead) -> None:
    got = _read_text(path, rel, out)
    if got is None:
        return
    text, sha = got
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        out.problems.append(ReadProblem(rel, None, f"not TOML: {exc}"))
        return
    name = str(data.get("formula") or data.get("name") or path.name.removesuffix(".formula.toml"))
    header = f"Formula {name} [{rel}]"
    if isinstance(data.get("description"), str):
        header += "\n" + " ".join(data["description"].split())
    lines = []
    for key, value in data.items():
        if key in ("formula", "name", "description"):
            continue
        if key == "steps" and isinstance(value, list):
            lines.extend(_step_line(step) for step in value if isinstance(step, dict))
        else:
            lines.extend(render_structure({key: value}))
    chunks = _chunkread_lines(lines, limit) or [""]
    role = next((ROLE_DIRS[t] for t in re.split(r"[-_.]", name) if t in ROLE_DIRS), "")
    unit = _file_unit("formulas", rel, rig, sha, header, chunks, _mtime(path), name)
    for i, doc in enumerate(unit.documents):
        unit.documents[i] = replace(doc, role=role or doc.role)
    out.units.append(unit)


def _step_line(step: dict[str, Any]) -> str:
    line = f"step {step.get('id', '?')}: {_scalar(step.get('title', ''))}"
    if step.get("description"):
        line += f" - {_scalar(step['description'])}"
    if step.get("needs"):
        line += f" (after {', '.join(map(str, step['needs']))})"
    return line


def read_rig_name(root: str | Path) -> str | None:
    """The rig's name from its ``rig.toml`` (``[rig] name``), None if absent or unreadable."""
    path = Path(root) / RIG_SETTINGS
    try:
        name = tomllib.loads(path.read_text()).get("rig", {}).get("name")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, AttributeError):
        return None
    return name if isinstance(name, str) and name else None
