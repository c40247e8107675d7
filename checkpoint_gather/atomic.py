"""Atomic outputs: build in a temporary sibling, then one ``rename`` publishes the result.

Every exporter (HF directory, GGUF file, PEFT adapter, stamped copy) writes through these two
context managers, so a crash, a failed verification or Ctrl-C leaves no final output behind —
only the temporary name is removed. An existing output is never overwritten.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from node.errors import CheckpointError


def _refuse_existing(out: Path) -> None:
    if out.exists() or out.is_symlink():
        raise CheckpointError(f"output {out} already exists; refusing to overwrite it",
                              hint="choose a new output path or remove the old one yourself")


def _fsync_tree(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``out``; rename it to ``out`` on success."""
    out = Path(out)
    _refuse_existing(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        _refuse_existing(out)  # someone may have created it meanwhile
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(out: str | Path) -> Iterator[Path]:
    """Yield a temporary file path next to ``out``; rename it to ``out`` on success."""
    out = Path(out)
    _refuse_existing(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.partial-", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync_tree(tmp)
        _refuse_existing(out)
        os.rename(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
