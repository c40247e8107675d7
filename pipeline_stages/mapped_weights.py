"""Stage weights mapped from files: converted copies kept on disk, and how rows are read.

A float32 checkpoint served in bfloat16 on the CPU needs its tensors converted. Converted in
memory they become anonymous pages, all resident from the start: a first stage's embedding
table, of which decoding reads only the rows of the tokens it sees, then costs its whole size,
while the same stage in float32 maps the table from the checkpoint file and touches a few rows.
Here the converted bytes go to a file under ``$NODE0_HOME/converted`` and the stage maps that
file (``torch.from_file``, copy-on-write), so a bfloat16 stage pays for the pages it reads, like
a float32 one, and a restart converts nothing.

The source is read with ``pread`` a few MiB at a time, never mapped, so the conversion itself
adds no more than one chunk to the process's peak resident set. The conversion is
``Tensor.to(dtype)`` (round to nearest even), the same as an in-memory load, so both give the
same bytes.

An entry is named by the digest of what it derives from: the source file's resolved path, size
and modification time, the tensor's byte range and stored dtype, the shape and the target
dtype. A rewritten checkpoint gets new entries; stale ones are never read, and each stage load
deletes those whose source is gone or was rewritten (:func:`prune_stale_copies`). A directory
the copy cannot be written to (a full disk) is a warning, and the stage converts in memory as
before. Entries are published by one rename (:func:`base.atomic.atomic_file`), so daemons
loading the same stage at once each see a whole file or none. safetensors itself has no
streaming writer and no offsets API, so the few lines below read its documented header (an
8-byte little-endian length, then JSON) and write raw bytes.

A table read by row (a first stage's embedding) is advised ``MADV_RANDOM``
(:func:`advise_row_reads`): without it a lookup of a few rows faults in the kernel's whole
readahead window or page-cache folio around each row (measured: 64 random rows of a 54 MiB
bfloat16 table mapped 52 MiB), with it (and a new copy's written pages dropped from the page
cache, :func:`_drop_cached_pages`) about one page per row.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import math
import mmap
import os
import struct
from pathlib import Path

import torch

from base.atomic import atomic_file, atomic_write
from base.errors import CheckpointError

log = logging.getLogger(__name__)

STORED_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
_CHUNK_BYTES = 4 << 20


def _header(path: Path) -> tuple[int, dict]:
    """(offset of the data section, the JSON header) of a safetensors file."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        try:
            return 8 + length, json.loads(handle.read(length))
        except ValueError as exc:
            raise CheckpointError(f"cannot read safetensors header of {path}: {exc}") from exc


def converted_tensor(
    source: str | Path, name: str, dtype: torch.dtype, directory: str | Path
) -> torch.Tensor | None:
    """Tensor ``name`` of safetensors file ``source`` in ``dtype``, backed by a converted copy
    under ``directory`` (made on first use), mapped copy-on-write; None, with a warning, when
    the copy cannot be written there (a full disk, a read-only directory): the caller then
    converts in memory, which costs resident memory and nothing else."""
    source = Path(source).resolve()
    data_start, header = _header(source)
    entry = header.get(name)
    if entry is None:
        raise CheckpointError(f"{source} has no tensor {name}")
    stored = STORED_DTYPES.get(entry["dtype"])
    if stored is None:
        raise CheckpointError(f"{name}: stored dtype {entry['dtype']} cannot be converted")
    shape = tuple(entry["shape"])
    first, last = entry["data_offsets"]
    if last - first != math.prod(shape) * stored.itemsize:
        raise CheckpointError(f"{name}: {last - first} bytes for shape {list(shape)}")
    stat = source.stat()
    origin = {"source": str(source), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    key = json.dumps([origin, name, first, last, entry["dtype"], list(shape), str(dtype)])
    target = Path(directory) / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.bin"
    numel = math.prod(shape)
    if numel == 0:  # nothing to map (mmap refuses an empty file)
        return torch.empty(shape, dtype=dtype)
    if not (target.is_file() and target.stat().st_size == numel * dtype.itemsize):
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(target, overwrite=True, durable=True) as tmp:
                _convert(source, data_start + first, data_start + last, stored, dtype, tmp)
            atomic_write(target.with_suffix(".json"), json.dumps({**origin, "tensor": name}))
        except OSError as exc:
            log.warning(
                "cannot keep a %s copy of %s under %s (%s): converting it in memory",
                str(dtype).removeprefix("torch."),
                name,
                directory,
                exc,
            )
            return None
        _drop_cached_pages(target)
    return torch.from_file(str(target), shared=False, size=numel, dtype=dtype).view(shape)


def prune_stale_copies(directory: str | Path) -> None:
    """Delete the copies under ``directory`` whose source file is gone or was rewritten since
    (each copy's ``.json`` names its source's path, size and modification time). A daemon
    still mapping a deleted copy keeps reading it: an unlinked file lives until its last
    mapping closes."""
    for record in Path(directory).glob("*.json"):
        try:
            origin = json.loads(record.read_text())
            stat = Path(origin["source"]).stat()
            if (stat.st_size, stat.st_mtime_ns) == (origin["size"], origin["mtime_ns"]):
                continue
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable (another writer, another format): not ours to judge
        record.with_suffix(".bin").unlink(missing_ok=True)
        record.unlink(missing_ok=True)


def _drop_cached_pages(path: Path) -> None:
    """Evict a just-written file from the page cache (it is on disk: the write was durable).
    Written pages sit in large folios, and a fault maps the whole folio around the page it
    needs whatever the advice (measured on Linux 6.18: 16 rows of a 16 MiB table mapped all of
    it); read back on demand they come in the size the mapping asks for."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _convert(
    source: Path, begin: int, end: int, stored: torch.dtype, dtype: torch.dtype, out: Path
) -> None:
    """Convert bytes ``[begin, end)`` of ``source`` into ``out`` through two buffers mapped
    for the purpose (not from the heap, where each tensor's freed buffers would stay)."""
    step = _CHUNK_BYTES - _CHUNK_BYTES % stored.itemsize
    with (
        mmap.mmap(-1, step) as raw_buffer,
        mmap.mmap(-1, step // stored.itemsize * dtype.itemsize) as converted_buffer,
    ):
        raw = torch.frombuffer(raw_buffer, dtype=torch.uint8)
        converted = torch.frombuffer(converted_buffer, dtype=dtype)
        fd = os.open(source, os.O_RDONLY)
        try:
            with out.open("wb") as sink:
                for offset in range(begin, end, step):
                    size = min(step, end - offset)
                    got = os.preadv(fd, [memoryview(raw_buffer)[:size]], offset)
                    if got != size:
                        raise CheckpointError(f"{source} is truncated at byte {offset + got}")
                    part = converted[: size // stored.itemsize]
                    part.copy_(raw[:size].view(stored))
                    sink.write(memoryview(converted_buffer)[: part.numel() * dtype.itemsize])
        finally:
            os.close(fd)
            del raw, converted  # the buffers' exports end before the mappings close


_MADV_RANDOM = 1
_PAGE = os.sysconf("SC_PAGE_SIZE")


def advise_row_reads(tensor: torch.Tensor) -> None:
    """Tell the kernel that ``tensor`` (on the CPU, possibly a file mapping) is read a row at a
    time, in no order: no readahead and no fault-around beyond the page a row is on. Harmless
    on anonymous memory; a no-op off the CPU or where ``madvise`` is unavailable."""
    if tensor.device.type != "cpu" or tensor.numel() == 0:
        return
    begin = -(-tensor.data_ptr() // _PAGE) * _PAGE  # whole pages inside the tensor only
    end = (tensor.data_ptr() + tensor.numel() * tensor.element_size()) // _PAGE * _PAGE
    if end <= begin:
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not glibc
        return
    libc.madvise(ctypes.c_void_p(begin), ctypes.c_size_t(end - begin), _MADV_RANDOM)
