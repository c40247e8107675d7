"""Byte-level reading shared by the readers: JSONL lines and whole text files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from base.hashing import sha256_bytes
from gastown.problems import Problem


@dataclass(frozen=True)
class JsonLine:
    """One line that is a JSON object."""

    line: int
    obj: dict[str, Any]
    raw: bytes = field(repr=False)

    @property
    def sha256(self) -> str:
        return sha256_bytes(self.raw)


def json_lines(root: Path, rel: str) -> Iterator[JsonLine | Problem]:
    """Exactly one item per line of ``root/rel``: the JSON object, or why it is not one.

    Lines are split at ``\\n`` only; a final newline does not start another line. A file that
    cannot be read at all gives one whole-file ``unreadable`` problem.
    """
    try:
        data = (root / rel).read_bytes()
    except OSError as exc:
        yield Problem(rel, 1, 1, "unreadable", exc.strerror or type(exc).__name__, whole_file=True)
        return
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    for number, raw in enumerate(raw_lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield Problem(rel, number, number, "invalid_utf8", f"byte {exc.start}")
            continue
        if not text.strip():
            yield Problem(rel, number, number, "blank_line")
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            yield Problem(rel, number, number, "invalid_json", f"{exc.msg} at column {exc.colno}")
            continue
        if not isinstance(obj, dict):
            yield Problem(rel, number, number, "not_an_object", type(obj).__name__)
            continue
        yield JsonLine(number, obj, raw)


@dataclass(frozen=True)
class TextFile:
    """A whole UTF-8 file: its text, line count and the sha256 of its bytes."""

    rel: str
    text: str
    n_lines: int
    sha256: str


def text_file(root: Path, rel: str) -> TextFile | Problem:
    """The file's text, or an ``unreadable`` / ``invalid_utf8`` / ``empty_file`` problem."""
    try:
        data = (root / rel).read_bytes()
    except OSError as exc:
        return Problem(rel, 1, 1, "unreadable", exc.strerror or type(exc).__name__, whole_file=True)
    n_lines = max(1, data.count(b"\n") + (0 if data.endswith(b"\n") else 1))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Problem(rel, 1, n_lines, "invalid_utf8", f"byte {exc.start}", whole_file=True)
    if not text.strip():
        return Problem(rel, 1, n_lines, "empty_file", whole_file=True)
    return TextFile(rel, text, n_lines, sha256_bytes(data))


def nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def first_missing(obj: dict[str, Any], *names: str) -> str | None:
    """The first of ``names`` that is missing or not a non-empty string, else None."""
    return next((name for name in names if not nonempty_str(obj.get(name))), None)


def optional_str(value: Any) -> str | None:
    """A non-empty string, else None (``null``, ``""`` and non-strings are "not given")."""
    return value if nonempty_str(value) else None
