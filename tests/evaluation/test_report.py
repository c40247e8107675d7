"""Category scores, the weighted composite, the gate, and the paired comparison."""

from __future__ import annotations

import json

import pytest

from evaluation.compare import compare_runs, mcnemar_exact, paired_difference
from evaluation.report import build_scores, gate_lines
from evaluation.runner import TaskResult
from evaluation.task import SuiteConfig


def config(**gate) -> SuiteConfig:
    return SuiteConfig(name="t", tasks=["x.yaml"],
                       weights={"planning": 3.0, "git_workflow": 1.0, "code_execution": 1.0},
                       gate={"composite": 50, **gate})  # fmt: skip


def results(spec: dict[str, list[bool]]) -> list[TaskResult]:
    return [TaskResult(f"{cat}-{i}", cat, 100.0 if ok else 0.0, ok)
            for cat, oks in spec.items() for i, ok in enumerate(oks)]  # fmt: skip


def scores(spec, **gate):
    return build_scores(results(spec), config(**gate), suite_sha256="0", model="m",
                        adapters=["a"], backend="swarm", sandbox={})  # fmt: skip


def test_category_percent_passed_and_weighted_composite():
    s = scores({"planning": [True, True, False, False], "git_workflow": [True, False]})
    assert s["categories"]["planning"] == {"score": 50.0, "passed": 2, "total": 4,
                                           "threshold": None}  # fmt: skip
    assert s["categories"]["git_workflow"]["score"] == 50.0
    assert "code_execution" not in s["categories"]  # no task: left out, weights renormalised
    assert s["composite"] == 50.0
    s = scores({"planning": [True], "git_workflow": [False]})
    assert s["composite"] == 75.0  # (3 * 100 + 1 * 0) / 4


def test_gate_names_the_failed_category():
    s = scores({"planning": [True], "git_workflow": [False]}, categories={"git_workflow": 40})
    assert s["gate"] == {"passed": False, "failed_categories": ["git_workflow"],
                         "composite_threshold": 50, "composite_passed": True}  # fmt: skip
    assert any("FAILED (category git_workflow" in line for line in gate_lines(s))
    s = scores({"planning": [True], "git_workflow": [True]}, categories={"git_workflow": 40})
    assert s["gate"]["passed"] and gate_lines(s)[-1] == "gate: PASSED"
    assert set(s) >= {"suite", "model", "adapters", "categories", "composite", "gate"}


def test_mcnemar_exact_and_paired_interval():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 * 0.5**6)
    assert mcnemar_exact(6, 0) == mcnemar_exact(0, 6)
    assert mcnemar_exact(2, 3) == pytest.approx(1.0)
    delta, low, high = paired_difference(1, 5, 20)
    assert delta == pytest.approx(20.0) and low < delta < high


def _run(tmp_path, name, passed: dict[str, bool], category="planning"):
    run = tmp_path / name
    run.mkdir()
    tasks = {t: {"category": category, "score": 100.0 * ok, "passed": ok}
             for t, ok in passed.items()}  # fmt: skip
    (run / "scores.json").write_text(json.dumps({"model": "m", "adapters": [], "composite": 0,
                                                 "tasks": tasks}))  # fmt: skip
    return run


def test_compare_discordance_and_verdict(tmp_path):
    ids = [f"t{i}" for i in range(10)]
    a = _run(tmp_path, "a", {t: i < 2 for i, t in enumerate(ids)})
    b = _run(tmp_path, "b", {t: i < 9 for i, t in enumerate(ids)} | {"extra": True})
    result = compare_runs(a, b)
    assert result["discordant"] == {"a_only": [], "b_only": ["t2", "t3", "t4", "t5", "t6",
                                                             "t7", "t8"]}  # fmt: skip
    assert result["only_in_b"] == ["extra"] and result["paired_tasks"] == 10
    assert result["mcnemar_p"] == pytest.approx(2 * 0.5**7)
    assert result["verdict"] == "B better"
    assert result["categories"]["planning"]["delta"] == 70.0
    same = compare_runs(a, a)
    assert same["mcnemar_p"] == 1.0 and same["verdict"] == "no significant difference"
