"""From task results to category scores, the composite and the gate (``scores.json``).

As the spec fixes it: each task passes or fails (its 0-100 score against its ``pass_score``);
a category's score is the percentage of its tasks that passed; the composite is the average of
the category scores weighted by the suite's ``weights`` (categories with no task in the run
are left out, and the weights renormalised); the gate passes when the composite reaches the
suite's ``gate.composite`` and every category its own threshold.

``scores.json`` (read by the model registry to decide whether a version is gated; its shape is
documented in docs/eval.md and kept stable)::

    {"suite": str, "suite_sha256": str, "model": str, "adapters": [str], "backend": str,
     "categories": {name: {"score": pct, "passed": n, "total": n, "threshold": x|null}},
     "composite": x,
     "gate": {"passed": bool, "failed_categories": [str], "composite_threshold": x},
     "tasks": {id: {"category", "score", "passed"}},
     "sandbox": {"isolation", "bd", "gt"}, "seed": n, "temperature": x}
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from evaluation.runner import TaskResult
from evaluation.task import CATEGORIES, SuiteConfig


def category_scores(results: Iterable[TaskResult], config: SuiteConfig) -> dict[str, dict]:
    """Per category with tasks in the run: percent passed, passed, total, threshold."""
    out: dict[str, dict[str, Any]] = {}
    results = list(results)
    for name in CATEGORIES:
        mine = [r for r in results if r.category == name]
        if not mine:
            continue
        passed = sum(r.passed for r in mine)
        out[name] = {
            "score": round(100.0 * passed / len(mine), 2),
            "passed": passed,
            "total": len(mine),
            "threshold": config.gate.categories.get(name),
        }
    return out


def composite(categories: dict[str, dict], weights: dict[str, float]) -> float:
    """The weighted average of the category scores (weights renormalised over those present)."""
    total = sum(weights.get(name, 0.0) for name in categories)
    if total <= 0:
        return 0.0
    return round(sum(c["score"] * weights.get(n, 0.0) for n, c in categories.items()) / total, 2)


def gate(categories: dict[str, dict], value: float, config: SuiteConfig) -> dict[str, Any]:
    """The gate verdict: passed, the categories below their threshold, the composite's."""
    failed = [
        name
        for name, c in categories.items()
        if c["threshold"] is not None and c["score"] < c["threshold"]
    ]
    threshold = config.gate.composite
    return {
        "passed": not failed and value >= threshold,
        "failed_categories": failed,
        "composite_threshold": threshold,
        "composite_passed": value >= threshold,
    }


def build_scores(
    results: list[TaskResult],
    config: SuiteConfig,
    *,
    suite_sha256: str,
    model: str,
    adapters: list[str],
    backend: str,
    sandbox: dict[str, str],
) -> dict[str, Any]:
    """The ``scores.json`` document of a run."""
    categories = category_scores(results, config)
    value = composite(categories, dict(config.weights))
    return {
        "suite": config.name,
        "suite_sha256": suite_sha256,
        "model": model,
        "adapters": list(adapters),
        "backend": backend,
        "categories": categories,
        "composite": value,
        "gate": gate(categories, value, config),
        "tasks": {
            r.id: {"category": r.category, "score": r.score, "passed": r.passed} for r in results
        },  # fmt: skip
        "sandbox": sandbox,
        "seed": config.generation.seed,
        "temperature": config.generation.temperature,
    }


def gate_lines(scores: dict[str, Any]) -> list[str]:
    """The verdict for a terminal: each category, the composite, and what failed."""
    lines = []
    for name, c in scores["categories"].items():
        mark = "" if c["threshold"] is None else f" (threshold {c['threshold']:g})"
        below = c["threshold"] is not None and c["score"] < c["threshold"]
        lines.append(f"  {name:22s} {c['score']:6.1f}%  {c['passed']}/{c['total']}{mark}"
                     + ("  BELOW" if below else ""))  # fmt: skip
    g = scores["gate"]
    lines.append(f"  {'composite':22s} {scores['composite']:6.1f}   "
                 f"(threshold {g['composite_threshold']:g})")  # fmt: skip
    if g["passed"]:
        lines.append("gate: PASSED")
    else:
        why = [f"category {n}" for n in g["failed_categories"]]
        if not g["composite_passed"]:
            why.append("composite")
        lines.append(f"gate: FAILED ({', '.join(why)} below threshold)")
    return lines
