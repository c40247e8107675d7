"""Convention documents (``CLAUDE.md``, ``AGENTS.md``) and their older versions.

A document's current version is the file itself (``polecats/CLAUDE.md``); an older version
lives in ``<history dir>/<doc path>/<UTC stamp>.md`` (e.g.
``history/polecats/CLAUDE.md/20260212T100000Z.md``). Each file is one record: UTF-8 text
that is not blank. A document's role is the nearest role directory of its path
(``polecats/CLAUDE.md`` → polecat); a rig-level document names none (None).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from gastown._read import text_file
from gastown.layout import HISTORY_DIR
from gastown.problems import Problem
from gastown.roles import role_from_path

STAMP = re.compile(r"^\d{8}T\d{6}Z$")
CURRENT = "~current"
"""The version stamp of a current document: sorts after every UTC stamp."""


@dataclass(frozen=True)
class ConventionDoc:
    """One version of a convention document.

    Attributes:
        doc_path: the document this is a version of, relative to the rig root.
        stamp: ``YYYYMMDDTHHMMSSZ`` of a history version, :data:`CURRENT` for the file itself.
        file: the file read (``doc_path`` itself, or its history file).
        n_lines: the file's line count (a whole file is lines 1..n_lines).
        sha256: sha256 of the file's bytes.
    """

    rig: str
    doc_path: str
    stamp: str
    file: str
    text: str
    n_lines: int
    sha256: str
    role: str | None

    @property
    def is_current(self) -> bool:
        return self.stamp == CURRENT

    @property
    def version(self) -> tuple[str, str]:
        """A later stamp is newer; the current file is newer than every history version."""
        return (self.stamp, self.file)


def history_version(rel: str, history_dir: str = HISTORY_DIR) -> tuple[str, str] | None:
    """``(doc path, stamp)`` of a history file name, None if it does not follow the pattern."""
    prefix = history_dir.rstrip("/") + "/"
    if not rel.startswith(prefix):
        return None
    doc_path, _, name = rel[len(prefix) :].rpartition("/")
    stamp = name.removesuffix(".md")
    if not doc_path or not name.endswith(".md") or not STAMP.match(stamp):
        return None
    return doc_path, stamp


def read_document(
    root: str | Path, rel: str, *, rig: str, history_dir: str = HISTORY_DIR
) -> ConventionDoc | Problem:
    """Read one document file: the current version, or a history version under ``history_dir``.

    Returns the version, or the problem: ``unreadable``, ``invalid_utf8``, ``empty_file``
    (not malformed: nothing there), ``bad_history_name``.
    """
    prefix = history_dir.rstrip("/") + "/"
    doc_path, stamp = rel, CURRENT
    if rel.startswith(prefix):
        named = history_version(rel, history_dir)
        if named is None:
            return Problem(
                rel,
                1,
                1,
                "bad_history_name",
                f"expected {prefix}<doc path>/<YYYYMMDDTHHMMSSZ>.md",
                whole_file=True,
            )
        doc_path, stamp = named
    got = text_file(Path(root), rel)
    if isinstance(got, Problem):
        return got
    return ConventionDoc(
        rig=rig,
        doc_path=doc_path,
        stamp=stamp,
        file=rel,
        text=got.text,
        n_lines=got.n_lines,
        sha256=got.sha256,
        role=role_from_path(doc_path),
    )
