"""Atomic outputs: build under a temporary name next to the target, then one rename publishes it.

A reader, or whoever looks after a crash, sees the old content or the new, never a partial one.
Three shapes, one mechanism:

- :func:`atomic_write`: a small file written whole (run records, peer files, state files); it
  replaces an existing file.
- :func:`atomic_file`: a large file the caller streams into a yielded temporary path (a GGUF
  writer, ``torch.save``, a manifest).
- :func:`atomic_dir`: a directory the caller fills (an HF checkpoint, a prepared model).

The temporary entry lives inside a private directory ``.<name>.partial-XXXX`` next to the
target (``tempfile.mkdtemp``, so concurrent writers never share a name), which is removed
whatever happens: an error, a failed verification or Ctrl-C leaves only what was there before.
A temporary *file* is never pre-created and truncated (ext4 flushes a file rewritten after a
truncation when it is closed, a synchronous write of the whole file).

Existing targets: with ``overwrite=False`` (the default of the two context managers) an existing
target is refused with :class:`~base.errors.CheckpointError`, before anything is written and
again just before the rename. With ``overwrite=True`` it is replaced: a file by one
``rename``; a directory by two (the old one set aside, then the new one in, since ``rename``
cannot replace a non-empty directory), so between them the target is briefly absent, never
partial.

Durability (``durable=True``): before the rename every file and directory of the result is
fsynced, and after it the parent directory, so a published output survives a power loss or an
OS crash too; writers of big files call :func:`flush_early` on each as soon as it is complete,
so its writeback runs while they go on. With ``durable=False`` (the default) nothing is fsynced:
the output is still complete or absent whatever happens to the *process* (the rename comes after
the last write), but after an OS crash or power loss within the kernel's writeback delay (about
30 s) a published file may be incomplete.
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

__all__ = ["atomic_dir", "atomic_file", "atomic_write", "flush_early"]


def atomic_write(path: str | Path, data: bytes | str, *, durable: bool = False) -> None:
    """Write ``data`` (``str`` as UTF-8) to ``path`` whole, replacing what was there."""
    with atomic_file(path, overwrite=True, durable=durable) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


@contextlib.contextmanager
def atomic_file(
    path: str | Path, *, overwrite: bool = False, durable: bool = False
) -> Iterator[Path]:
    """Yield a temporary file path (not yet existing) next to ``path``; publish it as ``path``
    when the block ends without an error (the block must have written it).

    Args:
        path: the file to publish.
        overwrite: replace an existing ``path`` instead of refusing it.
        durable: fsync the file before the rename and the directory after it.

    Raises:
        CheckpointError: ``path`` exists and ``overwrite`` is false.
    """
    with _staged(Path(path), is_dir=False, overwrite=overwrite, durable=durable) as tmp:
        yield tmp


@contextlib.contextmanager
def atomic_dir(
    path: str | Path, *, overwrite: bool = False, durable: bool = False
) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``path``; publish it as ``path`` when the
    block ends without an error.

    Args:
        path: the directory to publish.
        overwrite: replace an existing ``path`` instead of refusing it.
        durable: fsync every file and directory of the result before the rename and the parent
            after it.

    Raises:
        CheckpointError: ``path`` exists and ``overwrite`` is false.
    """
    with _staged(Path(path), is_dir=True, overwrite=overwrite, durable=durable) as tmp:
        yield tmp


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


@contextlib.contextmanager
def _staged(out: Path, *, is_dir: bool, overwrite: bool, durable: bool) -> Iterator[Path]:
    if not overwrite:
        _refuse_existing(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    tmp = work / out.name
    try:
        if is_dir:
            tmp.mkdir()
        yield tmp
        if not (tmp.is_dir() if is_dir else tmp.is_file()):
            raise FileNotFoundError(f"{tmp} was not written")
        if durable:
            _fsync_tree(tmp)
        _publish(tmp, out, overwrite=overwrite, aside=work / ".replaced")
        if durable:
            _fsync(out.parent)  # the rename itself reaches the disk
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the temp on failure, the replaced old one


def _publish(tmp: Path, out: Path, *, overwrite: bool, aside: Path) -> None:
    if not overwrite:
        _refuse_existing(out)  # someone may have created it meanwhile
        os.rename(tmp, out)
    elif tmp.is_dir() and out.is_dir() and not out.is_symlink():
        os.rename(out, aside)
        try:
            os.rename(tmp, out)
        except BaseException:
            os.rename(aside, out)
            raise
    else:
        os.replace(tmp, out)


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
