"""``node0 formula run``: typed variables refused before anything runs, phase evidence, the
flow stopping on the first failure with its code (the job bead failed with the reason), and
``--resume`` rerunning only what did not pass."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from base.errors import ExitCode
from gastown.beads import newest_beads, read_beads
from node.cli import main

FORMULA = Path("configs/formulas/train-role-model.formula.toml").resolve()


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("NODE0_HOME", str(tmp_path / "home"))
    return tmp_path


def job_bead(rig: Path):
    beads = newest_beads(read_beads(rig, rig=rig.name).beads).winners
    jobs = [b for b in beads.values() if "training-job" in (b.fields.get("labels") or [])]
    assert len(jobs) == 1
    return jobs[0]


@pytest.mark.parametrize(
    ("var", "message"),
    [
        ("role=pilot", "not one of"),
        ("lora_rank=eight", "is not a int"),
        ("lora_rank=0", "below the minimum"),
        ("rig=/nonexistent", "no directory"),
        ("colour=blue", "unknown variable"),
    ],
)
def test_bad_variables_are_refused_before_anything_runs(env, capsys, var, message):
    argv = ["formula", "run", str(FORMULA), "--runs-dir", str(env / "runs"), "--var", var]
    if not var.startswith("role="):
        argv += ["--var", "role=deacon"]
    assert main(argv) == ExitCode.CONFIG
    assert message in capsys.readouterr().err
    assert not (env / "runs").exists()


def test_role_is_required(env, capsys):
    assert main(["formula", "run", str(FORMULA), "--runs-dir", str(env / "runs")]) == 3
    assert "--var role=… is required" in capsys.readouterr().err


def test_failed_phase_stops_the_flow_and_resume_reruns_it(env, small_rig, capsys):
    # the real formula's first phase (a real corpus build) under a second phase that fails once
    text = FORMULA.read_text().split("[[steps]]")
    flag = env / "fail-once"
    flag.write_text("x")
    failing = (
        '\nid = "train"\ntitle = "a step that fails while the flag file exists"\n'
        'needs = ["prepare"]\nstate = "training"\n'
        f'command = ["{sys.executable}", "-c", '
        f'"import os, sys; sys.exit(5 if os.path.exists({str(flag)!r}) else 0)"]\n'
    )
    formula = env / "two-phase.formula.toml"
    formula.write_text(text[0] + "[[steps]]" + text[1] + "[[steps]]" + failing)
    runs = env / "runs"
    argv = [
        "formula",
        "run",
        str(formula),
        "--runs-dir",
        str(runs),
        "--var",
        "role=witness",
        "--var",
        f"rig={small_rig}",
    ]
    assert main(argv) == 5  # the failing command's code
    out = capsys.readouterr().out
    assert "PHASE=prepare STATUS=ok" in out and "PHASE=train STATUS=fail CODE=5" in out
    (run,) = runs.glob("formula-*")
    prepare = json.loads((run / "phase.prepare.json").read_text())
    assert prepare["outcome"] == "passed" and prepare["outputs"]["role_examples"] >= 1
    assert [c["ok"] for c in prepare["postconditions"]] == [True, True]
    assert prepare["artifacts"][0]["name"] == "manifest_file"
    failed = json.loads((run / "phase.train.json").read_text())
    assert failed["outcome"] == "failed" and failed["exit_code"] == 5
    summary = json.loads((run / "flow.summary.json").read_text())
    assert summary["first_failure"] == {"phase": "train", "code": 5}
    bead = job_bead(small_rig)
    assert bead.status == "failed" and json.loads(bead.fields["notes"])["failed_phase"] == "train"

    flag.unlink()
    assert main(["formula", "run", str(formula), "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "PHASE=prepare STATUS=skip" in out and "PHASE=train STATUS=ok" in out
    assert (run / "train.1").is_dir() and (run / "train.2").is_dir()  # nothing overwritten
    assert job_bead(small_rig).status == "done"
    # the resumed run refuses a changed formula
    formula.write_text(formula.read_text() + "\n# edited\n")
    assert main(["formula", "run", str(formula), "--resume", str(run)]) == ExitCode.CONFIG


def test_a_thin_partition_fails_the_prepare_gate(env, small_rig, capsys):
    runs = env / "runs"
    code = main(
        [
            "formula",
            "run",
            str(FORMULA),
            "--runs-dir",
            str(runs),
            "--var",
            "role=deacon",
            "--var",
            f"rig={small_rig}",
            "--var",
            "min_examples=1000",
        ]
    )
    assert code == ExitCode.DATA
    (run,) = runs.glob("formula-*")
    evidence = json.loads((run / "phase.prepare.json").read_text())
    assert evidence["reason"] == "role_partition" and not evidence["postconditions"][-1]["ok"]
    assert not (run / "phase.train.json").exists()
    assert job_bead(small_rig).status == "failed"
    shutil.rmtree(runs)
