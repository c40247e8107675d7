"""Atomic outputs: build in a temporary sibling, then one ``rename`` publishes the result.

Every exporter (HF directory, GGUF file, PEFT adapter, stamped copy) writes through these two
context managers, so a crash, a failed verification or Ctrl-C leaves no final output behind —
only the temporary name is removed. An existing output is never overwritten.

Durability (``durable=True``, the default of these two): before the rename every file and
directory of the result is fsynced, and after it the parent directory, so a published output
survives a power loss or an OS crash too; writers call :func:`flush_early` on a big file as soon
as it is complete, so its writeback runs while they go on. With ``durable=False`` nothing is
fsynced: the output is still complete or absent whatever happens to the *process* (the rename
comes after the last write), but after an OS crash or power loss within the kernel's writeback
delay (about 30 s) a published file may be incomplete — which its recorded sha256 reveals.

A temporary *file* is created inside a private temporary directory (never pre-created and
truncated: ext4 flushes a file rewritten after a truncation when it is closed, a synchronous
write of the whole file).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from base.errors import CheckpointError


def _refuse_existing(out: Path) -> None:
    if out.exists() or out.is_symlink():
        raise CheckpointError(
            f"output {out} already exists; refusing to overwrite it",
            hint="choose a new output path or remove the old one yourself",
        )


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """fsync a file, or every file and directory (its entries) of a tree."""
    for entry in [path] if path.is_file() else [path, *path.rglob("*")]:
        _fsync(entry)


def flush_early(path: str | Path) -> None:
    """Start writing a complete file back to the disk now, in a background thread.

    Only an early start: the fsync before the rename still waits until the data is on disk
    (if the file is gone by then, e.g. the job failed, the background fsync did no harm)."""
    fd = os.open(path, os.O_RDONLY)

    def sync() -> None:
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    threading.Thread(target=sync, name="flush-early", daemon=True).start()


def _publish(tmp: Path, out: Path, durable: bool) -> None:
    if durable:
        _fsync_tree(tmp)
    _refuse_existing(out)  # someone may have created it meanwhile
    os.rename(tmp, out)
    if durable:
        _fsync(out.parent)  # the rename itself reaches the disk


@contextlib.contextmanager
def atomic_dir(out: str | Path, *, durable: bool = True) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``out``; rename it to ``out`` on success."""
    out = Path(out)
    _refuse_existing(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
        _publish(tmp, out, durable)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(out: str | Path, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary file path (not yet existing) next to ``out``; rename it to ``out`` on
    success."""
    out = Path(out)
    _refuse_existing(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    tmp = tmp_dir / out.name
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"{tmp} was not written")
        _publish(tmp, out, durable)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
