"""Code execution: the fixture's pytest suite, run in the sandbox before and after the agent.

``pytest`` runs ``python -m pytest`` (the sandbox's isolation and environment; results read
from its JUnit XML) once before the model acts — the baseline — and once after. The score is
the pass rate of the task's ``targets`` (test ids, failing in the fixture) minus
``regression_penalty`` per test that passed in the baseline and fails now. Editing a protected
path (default ``tests/``) scores 0: the tests are the judge, not the agent's to change. The
task passes at 100: every target passes and nothing regressed.
"""

from __future__ import annotations

import hashlib
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from evaluation.sandbox import Sandbox
from evaluation.scorers.common import Attempt, Params, Score


class Pytest(Params):
    targets: list[str]
    protected: list[str] = ["tests"]
    regression_penalty: float = 25.0
    timeout_s: float = 120.0


def run_pytest(box: Sandbox, timeout_s: float) -> dict[str, bool]:
    """Test id (``file::name``) -> passed, from one pytest run in the sandbox."""
    report = box.root / "tmp" / "junit.xml"
    report.unlink(missing_ok=True)
    command = f"python -m pytest -q -p no:cacheprovider --junitxml={report} >/dev/null 2>&1"
    try:
        subprocess.run([*box.shell(), command], cwd=box.work, env=box.env(), timeout=timeout_s,
                       capture_output=True)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {}
    if not report.is_file():
        return {}
    results: dict[str, bool] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        path = (case.get("classname") or "").replace(".", "/")
        test_id = f"{path}.py::{case.get('name')}"
        results[test_id] = not any(child.tag in ("failure", "error", "skipped") for child in case)
    return results


def _digest(root: Path, rels: list[str]) -> str:
    h = hashlib.sha256()
    for rel in rels:
        base = root / rel
        files = sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else [base]
        for f in files:
            if f.is_file() and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def prepare(p: Pytest, box: Sandbox) -> None:
    """The baseline, before the model acts."""
    box.initial["pytest"] = run_pytest(box, p.timeout_s)
    box.initial["protected"] = _digest(box.work, p.protected)


def pytest_score(p: Pytest, attempt: Attempt) -> Score:
    box = attempt.sandbox
    if _digest(box.work, p.protected) != box.initial.get("protected"):
        return Score(0.0, {"protected_changed": True})
    before = box.initial.get("pytest", {})
    after = run_pytest(box, p.timeout_s)
    passed = [t for t in p.targets if after.get(t)]
    regressions = sorted(t for t, ok in before.items() if ok and not after.get(t))
    rate = 100.0 * len(passed) / len(p.targets)
    score = max(0.0, rate - p.regression_penalty * len(regressions))
    return Score(round(score, 2), {"targets_passed": f"{len(passed)}/{len(p.targets)}",
                                   "regressions": regressions,
                                   "tests_after": sum(after.values())})  # fmt: skip


SCORERS = {"pytest": (Pytest, pytest_score)}
PREPARE = {"pytest": prepare}
