"""`node0 rag index` / `node0 rag query` through the real entry point (in-process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from base.errors import ExitCode
from node.cli import main


def test_help_lists_subcommands():
    node0 = str(Path(sys.executable).with_name("node0"))
    out = subprocess.run([node0, "rag", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "index" in out.stdout and "query" in out.stdout


def test_index_then_query(tmp_path: Path, small_rig: Path, capsys: pytest.CaptureFixture):
    store, runs = tmp_path / "store", tmp_path / "runs"
    args = [
        "rag",
        "index",
        "--rig",
        str(small_rig),
        "--store",
        str(store),
        "--runs-root",
        str(runs),
        "--json",
    ]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rig"] == "testrig"
    assert report["collections"]["beads"]["added"] == 3
    (run,) = runs.iterdir()
    record = json.loads((run / "run_record.json").read_text())
    assert record["status"] == "done" and record["config"]["sha256"]
    assert [a["path"] for a in record["artifacts"]] == ["index_report.json"]
    assert record["store_counts"] == {"beads": 3, "configs": 3, "formulas": 1, "sessions": 1}

    assert main(args) == 0  # unchanged: nothing added
    again = json.loads(capsys.readouterr().out)
    assert all(
        c["docs_added"] == 0 and c["docs_deleted"] == 0 for c in again["collections"].values()
    )
    assert len(list(runs.iterdir())) == 2  # a new run directory, never overwritten

    assert (
        main(["rag", "query", "deacon compacts the issues file", "--store", str(store), "--k", "2"])
        == 0
    )
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("1. ") and "testrig/beads/tr-c3" in out.splitlines()[0]


def test_query_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture):
    assert main(["rag", "query", "x", "--store", str(tmp_path / "none")]) == ExitCode.DATA
    assert "no RAG store" in capsys.readouterr().err
    assert main(["rag", "query", "x", "--context-budget", "100"]) == ExitCode.CONFIG
    assert "--tokenizer" in capsys.readouterr().err
    assert (
        main(["rag", "index", "--rig", str(tmp_path / "missing"), "--store", str(tmp_path / "s")])
        == ExitCode.DATA
    )
