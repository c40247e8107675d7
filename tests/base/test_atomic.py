"""The one atomic writer: complete or absent, never partial; nothing left behind on failure."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from base import atomic
from base.atomic import atomic_dir, atomic_file, atomic_write
from base.errors import CheckpointError


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "state.json"
    atomic_write(path, "old\n")
    atomic_write(path, b"new\n")
    assert path.read_bytes() == b"new\n"
    assert _names(path.parent) == ["state.json"]


def test_concurrent_small_writers_never_share_a_temp_name(tmp_path):
    path = tmp_path / "peers.txt"
    payloads = [f"{i}\n".encode() * 10_000 for i in range(16)]
    threads = [threading.Thread(target=atomic_write, args=(path, p)) for p in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert path.read_bytes() in payloads  # one writer's bytes, whole
    assert _names(tmp_path) == ["peers.txt"]


def test_atomic_file_publishes_only_after_the_block(tmp_path):
    out = tmp_path / "model.gguf"
    with atomic_file(out) as tmp:
        assert not tmp.exists()  # never pre-created
        tmp.write_bytes(b"gguf")
        assert not out.exists()
    assert out.read_bytes() == b"gguf"
    assert _names(tmp_path) == ["model.gguf"]


def test_a_failing_writer_leaves_nothing_and_keeps_the_old_file(tmp_path):
    fresh = tmp_path / "fresh.bin"
    with pytest.raises(OSError, match="disk died"), atomic_file(fresh) as tmp:
        tmp.write_bytes(b"half")
        raise OSError("disk died")
    assert _names(tmp_path) == []
    old = tmp_path / "ckpt.pt"
    old.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_file(old, overwrite=True) as tmp:
        tmp.write_bytes(b"torn")
        raise KeyboardInterrupt
    assert old.read_bytes() == b"old"
    assert _names(tmp_path) == ["ckpt.pt"]


def test_a_block_that_writes_nothing_publishes_nothing(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_file(tmp_path / "out.json"):
        pass
    assert _names(tmp_path) == []


def test_an_existing_output_is_refused_before_and_at_the_rename(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CheckpointError, match="already exists"), atomic_dir(out):
        pytest.fail("the block must not run")
    other = tmp_path / "other"
    with pytest.raises(CheckpointError, match="already exists"), atomic_dir(other) as tmp:
        (tmp / "weights").write_bytes(b"mine")
        other.mkdir()  # a concurrent job published first
        (other / "weights").write_bytes(b"theirs")
    assert (other / "weights").read_bytes() == b"theirs"
    assert _names(tmp_path) == ["other", "out"]


def test_atomic_dir_replaces_a_non_empty_directory(tmp_path):
    target = tmp_path / "hf"
    target.mkdir()
    (target / "stale.bin").write_bytes(b"stale")
    with pytest.raises(RuntimeError), atomic_dir(target, overwrite=True) as tmp:
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("conversion failed")
    assert _names(target) == ["stale.bin"]  # a failed rebuild keeps the old one
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "config.json").write_text("{}")
    assert _names(target) == ["sub"]
    assert _names(tmp_path) == ["hf"]  # the replaced directory is gone too


@pytest.mark.parametrize("durable", [False, True])
def test_durable_fsyncs_every_entry_then_the_parent(tmp_path, monkeypatch, durable):
    synced: list[Path] = []
    real = atomic._fsync
    monkeypatch.setattr(atomic, "_fsync", lambda p: synced.append(Path(p)) or real(p))
    out = tmp_path / "export"
    with atomic_dir(out, durable=durable) as tmp:
        (tmp / "a").mkdir()
        (tmp / "a" / "w.safetensors").write_bytes(b"w")
        staged = tmp
    if not durable:
        assert synced == []
        return
    rel = [p.relative_to(staged) for p in synced[:-1]]
    assert sorted(map(str, rel)) == [".", "a", "a/w.safetensors"]
    assert synced[-1] == tmp_path  # after the rename: the directory entry itself
