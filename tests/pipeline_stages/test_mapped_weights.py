"""Converted copies of stage weights on disk, mapped back lazily, and row-read advice."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from base.errors import CheckpointError
from pipeline_stages.loader import load_stage
from pipeline_stages.mapped_weights import (
    advise_row_reads,
    converted_tensor,
    prune_stale_copies,
)


def _mapped_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path`` (from ``/proc/self/smaps``)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.fixture
def source(tmp_path) -> Path:
    gen = torch.Generator().manual_seed(0)
    path = tmp_path / "model.safetensors"
    save_file(
        {
            "table": torch.randn(300, 70, generator=gen) * 3,
            "half": torch.randn(5, 4, generator=gen).to(torch.bfloat16),
        },
        str(path),
    )
    return path


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_converted_copy_holds_the_bytes_an_in_memory_conversion_gives(source, tmp_path, dtype):
    with safe_open(str(source), framework="pt") as handle:
        expected = handle.get_tensor("table").to(dtype)
    got = converted_tensor(source, "table", dtype, tmp_path / "cache")
    assert got.dtype == dtype and got.shape == expected.shape
    assert torch.equal(got.view(torch.int16), expected.view(torch.int16))


def test_a_bfloat16_tensor_widens_to_float32_exactly(source, tmp_path):
    with safe_open(str(source), framework="pt") as handle:
        stored = handle.get_tensor("half")
    got = converted_tensor(source, "half", torch.float32, tmp_path / "cache")
    assert torch.equal(got, stored.float())


def test_the_copy_is_made_once_and_mapped_from_disk(source, tmp_path):
    cache = tmp_path / "cache"
    first = converted_tensor(source, "table", torch.bfloat16, cache)
    (entry,) = cache.glob("*.bin")
    made = entry.stat().st_mtime_ns
    again = converted_tensor(source, "table", torch.bfloat16, cache)
    assert entry.stat().st_mtime_ns == made  # reused, not rewritten
    assert torch.equal(first, again)
    assert str(entry) in Path("/proc/self/maps").read_text()  # file-backed, not a heap copy


def test_a_rewritten_checkpoint_gets_a_new_copy_and_a_damaged_copy_is_remade(source, tmp_path):
    cache = tmp_path / "cache"
    converted_tensor(source, "table", torch.bfloat16, cache)
    (entry,) = cache.glob("*.bin")
    with entry.open("r+b") as handle:  # a copy cut short (a full disk, a stray truncate)
        handle.truncate(100)
    remade = converted_tensor(source, "table", torch.bfloat16, cache)
    with safe_open(str(source), framework="pt") as handle:
        expected = handle.get_tensor("table").to(torch.bfloat16)
    assert entry.stat().st_size == 300 * 70 * 2 and remade.shape == (300, 70)

    save_file({"table": torch.zeros(300, 70)}, str(source))
    os.utime(source, ns=(entry.stat().st_mtime_ns + 10**9,) * 2)
    fresh = converted_tensor(source, "table", torch.bfloat16, cache)
    assert not fresh.any()  # the new content, never the stale copy
    assert len(list(cache.glob("*.bin"))) == 2  # the stale copy stays until a prune
    prune_stale_copies(cache)
    assert list(cache.glob("*.bin")) != [entry] and len(list(cache.glob("*.bin"))) == 1
    assert torch.equal(remade, expected)  # a pruned copy still mapped stays readable


def test_copies_of_a_deleted_or_rewritten_checkpoint_go_at_the_next_stage_load(
    tiny_model_dir, source, tmp_path
):
    cache = tmp_path / "cache"
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.ones(8, 8)}, str(other))
    converted_tensor(other, "w", torch.float16, cache)
    converted_tensor(source, "table", torch.float16, cache)
    other.unlink()
    save_file({"table": torch.zeros(300, 70)}, str(source))
    os.utime(source, ns=(10**18,) * 2)
    stage = load_stage(tiny_model_dir, 0, 3, dtype=torch.float16, converted_dir=cache)
    kept = {json.loads(p.read_text())["source"] for p in cache.glob("*.json")}
    assert kept == {str((tiny_model_dir / "model.safetensors").resolve())}
    assert len(list(cache.glob("*.bin"))) == len(list(cache.glob("*.json")))
    assert stage.model.embed_tokens.weight.dtype == torch.float16


def test_a_directory_that_cannot_hold_copies_means_converting_in_memory(
    tiny_model_dir, tmp_path, caplog
):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    assert (
        converted_tensor(
            tiny_model_dir / "model.safetensors",
            "model.norm.weight",
            torch.bfloat16,
            blocked / "cache",
        )
        is None
    )
    assert "converting it in memory" in caplog.text
    stage = load_stage(tiny_model_dir, 0, 3, dtype=torch.bfloat16, converted_dir=blocked / "c")
    plain = load_stage(tiny_model_dir, 0, 3, dtype=torch.bfloat16)
    for name, tensor in plain.state_dict().items():
        assert torch.equal(stage.state_dict()[name], tensor), name


def test_an_empty_tensor_converts_to_an_empty_tensor(tmp_path):
    source = tmp_path / "empty.safetensors"
    save_file({"none": torch.zeros(0, 4)}, str(source))
    got = converted_tensor(source, "none", torch.bfloat16, tmp_path / "cache")
    assert got.shape == (0, 4) and got.dtype == torch.bfloat16


def test_a_missing_tensor_and_a_truncated_checkpoint_are_refused(source, tmp_path):
    with pytest.raises(CheckpointError, match="no tensor"):
        converted_tensor(source, "nothing", torch.bfloat16, tmp_path / "cache")
    data = source.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated"):
        converted_tensor(cut, "table", torch.bfloat16, tmp_path / "cache")
    assert not any((tmp_path / "cache").glob("*.bin"))  # nothing partial published


def test_a_stage_loaded_through_copies_equals_one_converted_in_memory(tiny_model_dir, tmp_path):
    cache = tmp_path / "cache"
    for span in ((0, 3), (3, 6)):
        in_memory = load_stage(tiny_model_dir, *span, dtype=torch.bfloat16)
        mapped = load_stage(tiny_model_dir, *span, dtype=torch.bfloat16, converted_dir=cache)
        a, b = in_memory.state_dict(), mapped.state_dict()
        assert a.keys() == b.keys()
        for name in a:
            assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
    assert any(cache.glob("*.bin"))


def test_a_float32_stage_converts_nothing(tiny_model_dir, tmp_path):
    load_stage(tiny_model_dir, 0, 3, converted_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_reading_a_few_rows_of_an_advised_table_maps_a_few_pages(tmp_path):
    """Without the advice this kernel maps the page-cache folio (or readahead window) around
    each row: 64 random rows of a 54 MiB table mapped 52 MiB of it."""
    rows, width = 16384, 512  # 16 MiB in bfloat16, a page per row
    source = tmp_path / "table.safetensors"
    save_file({"table": torch.ones(rows, width)}, str(source))
    table = converted_tensor(source, "table", torch.bfloat16, tmp_path / "cache")
    (entry,) = (tmp_path / "cache").glob("*.bin")
    advise_row_reads(table)
    looked_up = table[torch.arange(0, rows, rows // 16)]
    assert looked_up.sum() == 16 * width
    assert _mapped_kib(entry) < rows * width * 2 / 1024 / 4
