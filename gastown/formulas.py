"""Workflow formulas (``*.formula.toml``): one record per file.

A file is a formula when it is UTF-8 TOML with a non-empty string ``formula`` (its name), an
integer ``version`` and a string ``description``. Several files may hold versions of the same
formula (an ``archive/`` copy, say): :func:`newest_formulas` keeps the highest ``version``.
A formula's role is the first role its name names (``mol-witness-patrol`` → witness), else the
nearest role directory of its path, else None.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gastown._read import nonempty_str, text_file
from gastown.problems import Problem
from gastown.recency import Newest, newest
from gastown.roles import role_from_name, role_from_path


@dataclass(frozen=True)
class Step:
    """One ``[[steps]]`` entry."""

    id: str
    title: str
    description: str
    needs: tuple[str, ...]


@dataclass(frozen=True)
class Formula:
    """One formula file.

    Attributes:
        name, version_number, description: the required keys ``formula``, ``version`` and
            ``description`` (``version`` is the ordering key, see :meth:`version`).
        steps: its ``[[steps]]`` tables that are tables (others are ignored).
        data: the whole parsed TOML document.
        text: the file's text; ``n_lines`` its line count; ``sha256`` that of its bytes.
    """

    rig: str
    file: str
    name: str
    version_number: int
    description: str
    steps: tuple[Step, ...]
    role: str | None
    text: str
    n_lines: int
    sha256: str
    data: dict[str, Any] = field(repr=False, compare=False)

    @property
    def version(self) -> tuple[int, str]:
        """The recency key: a higher ``version`` number is newer; then the later file."""
        return (self.version_number, self.file)


def _steps(value: Any) -> tuple[Step, ...]:
    steps = value if isinstance(value, list) else []
    return tuple(
        Step(
            id=str(s.get("id", "?")),
            title=str(s.get("title", "")),
            description=str(s.get("description", "")),
            needs=tuple(map(str, s.get("needs") or ())),
        )
        for s in steps
        if isinstance(s, dict)
    )


def read_formula(root: str | Path, rel: str, *, rig: str) -> Formula | Problem:
    """Read one formula file, or say why it is not one (``invalid_toml``, ``missing_field``…)."""
    got = text_file(Path(root), rel)
    if isinstance(got, Problem):
        return got

    def problem(reason: Any, detail: str, subject: str = "") -> Problem:
        return Problem(rel, 1, got.n_lines, reason, detail, subject, whole_file=True)

    try:
        doc = tomllib.loads(got.text)
    except tomllib.TOMLDecodeError as exc:
        return problem("invalid_toml", str(exc))
    name, number = doc.get("formula"), doc.get("version")
    if not nonempty_str(name):
        return problem("missing_field", "formula")
    subject = f"formula {name}"
    if not isinstance(number, int) or isinstance(number, bool):
        return problem("missing_field", "version", subject)
    if not isinstance(doc.get("description"), str):
        return problem("missing_field", "description", subject)
    return Formula(
        rig=rig,
        file=rel,
        name=name,
        version_number=number,
        description=doc["description"],
        steps=_steps(doc.get("steps")),
        role=role_from_name(name) or role_from_path(rel),
        text=got.text,
        n_lines=got.n_lines,
        sha256=got.sha256,
        data=doc,
    )


def newest_formulas(formulas: list[Formula]) -> Newest[Formula]:
    """The newest version of every formula name; the others as superseded."""
    return newest(formulas, key=lambda f: f.name, content=lambda f: f.sha256)
