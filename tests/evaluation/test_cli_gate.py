"""``node0 eval --gate`` as a real process, in one process on a tiny model directory
(``--hf-dir``): exit 9 below the thresholds, naming the category, 0 at or above them; the run
directory holds the run record, scores.json, per-task results and transcripts. Then
``node0 eval compare`` on two runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from evaluation.task import EVAL_DIR
from tests.fixtures import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def suite(tmp_path: Path, composite: float, planning: float) -> Path:
    root = tmp_path / f"suite-{composite}-{planning}"
    (root / "tasks").mkdir(parents=True)
    shutil.copytree(EVAL_DIR / "fixtures", root / "fixtures")
    shutil.copy(EVAL_DIR / "tasks" / "convention_adherence.yaml", root / "tasks")
    (root / "suite.yaml").write_text(
        "name: gate-test\ntasks: [tasks/convention_adherence.yaml]\n"
        "weights: {convention_adherence: 1}\n"
        f"gate: {{composite: {composite}, categories: {{convention_adherence: {planning}}}}}\n"
        "limits: {max_steps: 2, max_new_tokens: 8}\n"
    )
    return root / "suite.yaml"


def eval_cli(tmp_path, suite_file, model_dir, runs):
    return run_cli(["node.cli", "eval", "--suite", str(suite_file), "--hf-dir", str(model_dir),
                    "--tasks", "conv-find-ready-work,conv-show-bead", "--gate",
                    "--runs-dir", str(runs), "--json"], timeout=600)  # fmt: skip


def test_gate_exit_codes_and_run_directory(tmp_path, tiny_model_dir):
    below = eval_cli(tmp_path, suite(tmp_path, 0, 50), tiny_model_dir, tmp_path / "runs-a")
    assert below.returncode == 9, below.stderr
    assert "quality gate failed: convention_adherence" in below.stderr
    assert "task 2/2 convention_adherence" in below.stderr  # progress lines
    above = eval_cli(tmp_path, suite(tmp_path, 0, 0), tiny_model_dir, tmp_path / "runs-b")
    assert above.returncode == 0, above.stderr
    assert "gate: PASSED" in above.stdout
    scores = json.loads(above.stdout.splitlines()[-1])
    run = Path(scores["run_dir"])
    on_disk = json.loads((run / "scores.json").read_text())
    assert on_disk["categories"]["convention_adherence"]["total"] == 2
    assert on_disk["gate"]["passed"] and on_disk["backend"].startswith("hf-dir:")
    record = json.loads((run / "run_record.json").read_text())
    assert record["status"] == "done" and record["seeds"] == {"sampling": 0}
    assert {a["path"] for a in record["artifacts"]} >= {
        "scores.json",
        "tasks/conv-show-bead.json",
        "transcripts/conv-show-bead.jsonl",
    }
    # the same greedy, seeded run gives the same per-task results
    first = json.loads(below.stdout.splitlines()[-1])
    assert {t: r["score"] for t, r in first["tasks"].items()} == {
        t: r["score"] for t, r in scores["tasks"].items()
    }
    compared = run_cli(["node.cli", "eval", "compare", first["run_dir"], str(run), "--json"])
    assert compared.returncode == 0, compared.stderr
    assert json.loads(compared.stdout)["verdict"] == "no significant difference"
