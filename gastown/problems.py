"""What a reader could not use: one typed :class:`Problem` per line or file, never an exception.

Readers never raise on bad input and never drop anything silently: every line of a JSONL file
and every Markdown/TOML file ends up as exactly one record or one problem. The consumer
decides what a problem means (the corpus quarantines or rejects the record with the reason;
RAG reports it and skips it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ProblemReason = Literal[
    "unreadable",  # the file cannot be read at all (OSError)
    "invalid_utf8",
    "blank_line",  # nothing there: not malformed
    "empty_file",  # nothing there: not malformed
    "invalid_json",
    "not_an_object",
    "invalid_toml",
    "unknown_schema",
    "missing_field",
    "bad_field",
    "unknown_role",
    "bad_history_name",
]

_EMPTY: frozenset[str] = frozenset({"blank_line", "empty_file"})

_TEXT: dict[str, str] = {
    "unreadable": "unreadable",
    "invalid_utf8": "not UTF-8",
    "blank_line": "blank line",
    "empty_file": "empty file",
    "invalid_json": "not JSON",
    "not_an_object": "not a JSON object",
    "invalid_toml": "not TOML",
    "unknown_schema": "unknown schema",
    "missing_field": "missing field",
    "bad_field": "bad field",
    "unknown_role": "unknown role",
    "bad_history_name": "not a history version name",
}


@dataclass(frozen=True)
class Problem:
    """One line (or whole file) a reader could not turn into a record.

    Attributes:
        file: the source file, relative to the rig root (POSIX separators).
        line: first line, 1-based (1 for a whole file).
        line_end: last line, inclusive (the file's line count for a whole file).
        reason: a stable machine-readable code (see :data:`ProblemReason`).
        detail: short specifics (``title``, ``priority=7``, ``turns[3]``, a parser message);
            never a value from the record beyond 40 characters.
        subject: what the record was, when known (``bead gt-zz02``, ``session ses-1``).
        whole_file: the problem is about the file, not one of its lines.
    """

    file: str
    line: int
    line_end: int
    reason: ProblemReason
    detail: str = ""
    subject: str = ""
    whole_file: bool = False

    @property
    def malformed(self) -> bool:
        """False for a blank line or an empty file (nothing there), True otherwise."""
        return self.reason not in _EMPTY

    @property
    def message(self) -> str:
        """One readable line: ``bead gt-zz02 has no title``, ``not JSON: Expecting ','…``."""
        if self.reason == "missing_field":
            return f"{self.subject or 'record'} has no {self.detail}"
        text = _TEXT[self.reason]
        if self.subject:
            text = f"{self.subject}: {text}"
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        where = self.file if self.whole_file else f"{self.file}:{self.line}"
        return f"{where}: {self.message}"
