"""Load dataset JSONL files into validated records; report every bad line, never drop silently.

A bad line (invalid UTF-8, invalid JSON, or a record the schema rejects) becomes a
:class:`LineError` with its file, 1-based line number and reason. With ``strict=True`` any bad
line raises :class:`~base.errors.DataError` listing them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

from base.errors import DataError
from dataload.schema import DPOPair, SFTExample

T = TypeVar("T", bound=BaseModel)


@dataclass(frozen=True)
class LineError:
    """One line that could not be loaded."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class JsonlResult(Generic[T]):
    """Records loaded from one or more files, in file order, plus the lines that failed."""

    records: list[T] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)
    lines_read: int = 0


def _validation_reason(exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<record>"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"schema: {loc}: {first['msg']}{more}"


def read_jsonl(path: str | Path, model: type[T], *, strict: bool = False) -> JsonlResult[T]:
    """Read one JSONL file of ``model`` records.

    Blank lines count as read and are reported as errors too: a dataset file written by the
    corpus pipeline never contains them.

    Raises:
        DataError: the file cannot be opened, or ``strict`` and at least one line failed.
    """
    p = Path(path)
    result: JsonlResult[T] = JsonlResult()
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read dataset file {p}: {exc}") from exc
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, raw_line in enumerate(lines, start=1):
        result.lines_read += 1
        try:
            text = raw_line.decode("utf-8")
        except UnicodeDecodeError as exc:
            result.errors.append(LineError(str(p), number, f"invalid UTF-8 at byte {exc.start}"))
            continue
        if not text.strip():
            result.errors.append(LineError(str(p), number, "blank line"))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            result.errors.append(LineError(str(p), number, f"invalid JSON: {exc.msg}"))
            continue
        try:
            result.records.append(model.model_validate(obj))
        except ValidationError as exc:
            result.errors.append(LineError(str(p), number, _validation_reason(exc)))
    if strict and result.errors:
        shown = "\n  ".join(str(e) for e in result.errors[:10])
        raise DataError(f"{len(result.errors)} malformed line(s) in {p}:\n  {shown}")
    return result


def read_many(paths: list[Path], model: type[T], *, strict: bool = False) -> JsonlResult[T]:
    """Read several files (in the given order) into one result."""
    total: JsonlResult[T] = JsonlResult()
    for p in paths:
        part = read_jsonl(p, model, strict=strict)
        total.records.extend(part.records)
        total.errors.extend(part.errors)
        total.lines_read += part.lines_read
    return total


def load_corpus_dir(
    path: str | Path, *, strict: bool = True
) -> tuple[JsonlResult[SFTExample], JsonlResult[DPOPair]]:
    """Load a corpus build's ``sft/**/*.jsonl`` and ``dpo/**/*.jsonl`` (sorted paths)."""
    root = Path(path)
    if not (root / "sft").is_dir() and not (root / "dpo").is_dir():
        raise DataError(f"{root} holds no sft/ or dpo/ directory; is it a corpus build?")
    sft = read_many(sorted((root / "sft").glob("**/*.jsonl")), SFTExample, strict=strict)
    dpo = read_many(sorted((root / "dpo").glob("**/*.jsonl")), DPOPair, strict=strict)
    return sft, dpo


__all__ = ["JsonlResult", "LineError", "load_corpus_dir", "read_jsonl", "read_many"]
