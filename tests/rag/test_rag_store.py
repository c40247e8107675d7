"""The store survives a process restart; one writer at a time; read-only stays read-only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from base.errors import DataError, ExitCode
from rag.indexer import index_rig
from rag.store import RagStore, StoreLockedError
from tests.fixtures import REPO

NODE0 = str(Path(sys.executable).with_name("node0"))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def test_second_process_queries_the_store(tmp_path: Path, small_rig: Path, embedder):
    store_dir = tmp_path / "store"
    with RagStore(store_dir, embedder=embedder, writable=True) as store:
        index_rig(store, small_rig, rig="testrig")
    out = subprocess.run(
        [
            NODE0,
            "rag",
            "query",
            "who do I report blockers to",
            "--store",
            str(store_dir),
            "--rig",
            "testrig",
            "--k",
            "3",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=ENV,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    hits = json.loads(out.stdout)["hits"]
    assert len(hits) == 3
    assert hits[0]["id"] == "testrig/configs/CLAUDE.md#1"  # the "## Mail" section
    assert all(h["rig"] == "testrig" and len(h["source_sha256"]) == 64 for h in hits)


def test_one_writer_at_a_time(tmp_path: Path, small_rig: Path, embedder):
    store_dir = tmp_path / "store"
    config = tmp_path / "rag.yaml"
    config.write_text("lock_timeout_s: 0.5\n")
    with RagStore(store_dir, embedder=embedder, writable=True) as store:
        index_rig(store, small_rig, rig="testrig")
        out = subprocess.run(
            [
                NODE0,
                "rag",
                "index",
                "--rig",
                str(small_rig),
                "--store",
                str(store_dir),
                "--config",
                str(config),
                "--runs-root",
                str(tmp_path / "runs"),
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=ENV,
            timeout=300,
        )
        assert out.returncode == ExitCode.DATA, out.stderr
        assert "is locked by another process" in out.stderr
        assert f"pid {os.getpid()}" in out.stderr
        with pytest.raises(StoreLockedError):  # a reader in this process waits for the writer
            RagStore(store_dir, embedder=embedder, lock_timeout_s=0.2)
    with RagStore(store_dir, embedder=embedder) as reader:
        assert reader.count() == 8
        with pytest.raises(DataError, match="read-only"):
            reader.delete("beads", ["testrig/beads/tr-a1"])


def test_missing_store_fails_closed(tmp_path: Path, embedder):
    with pytest.raises(DataError, match="no RAG store"):
        RagStore(tmp_path / "nothing", embedder=embedder)
    assert not (tmp_path / "nothing").exists()
