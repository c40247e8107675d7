"""Resolve dataset paths (JSONL files or corpus build directories) and read their records."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from base.errors import DataError
from dataload.jsonl_reader import LineError, read_many
from dataload.schema import DPOPair, SFTExample
from provenance import sha256_file

log = logging.getLogger(__name__)
T = TypeVar("T", bound=BaseModel)


@dataclass
class SourceRecords:
    """Records read from a list of paths, with what was read and what failed."""

    records: list = field(default_factory=list)
    files: list[dict] = field(default_factory=list)
    """``{"path", "sha256", "lines"}`` per file read, in read order."""
    errors: list[LineError] = field(default_factory=list)


def resolve_files(paths: list[Path], kind: str) -> list[Path]:
    """Expand corpus build directories into their ``<kind>/**/*.jsonl`` files (sorted).

    Raises:
        DataError: a path does not exist, or a directory holds no ``<kind>`` files.
    """
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted((p / kind).glob("**/*.jsonl"))
            if not found:
                raise DataError(f"{p} holds no {kind}/**/*.jsonl; is it a corpus build?")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"dataset path {p} does not exist")
    return files


def read_sources(
    paths: list[Path],
    kind: str,
    *,
    strict: bool,
    roles: list[str] | None = None,
    tasks: list[str] | None = None,
) -> SourceRecords:
    """Read SFT or DPO records from ``paths``, filtered by role / task.

    Every malformed line becomes a :class:`LineError` (file, line, reason). With ``strict`` any
    error raises; otherwise each is logged and kept in the result.

    Raises:
        DataError: unreadable paths, malformed lines under ``strict``, or nothing left to load.
    """
    model: type[BaseModel] = SFTExample if kind == "sft" else DPOPair
    files = resolve_files(paths, kind)
    loaded = read_many(files, model, strict=False)
    out = SourceRecords(errors=list(loaded.errors))
    for f in files:
        raw = f.read_bytes()
        lines = raw.count(b"\n") + (0 if raw.endswith(b"\n") or not raw else 1)
        out.files.append({"path": str(f), "sha256": sha256_file(f), "lines": lines})
    if out.errors:
        shown = "\n  ".join(str(e) for e in out.errors[:20])
        more = f"\n  … and {len(out.errors) - 20} more" if len(out.errors) > 20 else ""
        if strict:
            raise DataError(
                f"{len(out.errors)} malformed line(s) in the {kind} data:\n  {shown}{more}",
                hint="fix the lines, or set strict: false to skip them (they are still reported)",
            )
        for e in out.errors:
            log.warning("skipping malformed line %s", e)
    out.records = [
        r
        for r in loaded.records
        if (roles is None or r.role in roles) and (tasks is None or r.task in tasks)
    ]
    if not out.records:
        raise DataError(
            f"no {kind} examples in {[str(p) for p in paths]} (roles={roles}, tasks={tasks})"
        )
    return out
