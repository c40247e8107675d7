"""Reading an eval run's ``scores.json`` (written by ``node0 eval``; read here, not imported).

Shape::

    {"suite": …, "model": …, "adapters": […],
     "categories": {name: {"score": pct, "passed": n, "total": n, "threshold": x}},
     "composite": x,
     "gate": {"passed": bool, "failed_categories": […], "composite_threshold": x}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from base.errors import DataError

SCORES_FILE = "scores.json"


def read_scores(path: str | Path) -> dict[str, Any]:
    """The scores of an eval run (its directory or the ``scores.json`` file), checked.

    Raises:
        DataError: missing, not JSON, or without the fields the gate verdict needs.
    """
    path = Path(path)
    if path.is_dir():
        path = path / SCORES_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read eval scores {path}: {exc}") from exc
    problems = []
    if not isinstance(data, dict):
        raise DataError(f"{path}: eval scores must be a JSON object")
    categories = data.get("categories")
    if not isinstance(categories, dict):
        problems.append("categories is not an object")
    else:
        for name, entry in categories.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("score"), int | float):
                problems.append(f"categories.{name}.score is not a number")
    if not isinstance(data.get("composite"), int | float):
        problems.append("composite is not a number")
    gate = data.get("gate")
    if not isinstance(gate, dict) or not isinstance(gate.get("passed"), bool):
        problems.append("gate.passed is not true/false")
    if problems:
        raise DataError(f"{path}: not an eval scores file: " + "; ".join(problems))
    return data


def summary(scores: dict[str, Any] | None) -> str:
    """One line: the composite, the gate verdict and each category's score."""
    if not scores:
        return "not evaluated"
    cats = ", ".join(f"{k} {v['score']:g}" for k, v in sorted(scores["categories"].items()))
    verdict = "passed" if scores["gate"]["passed"] else "FAILED"
    return f"composite {scores['composite']:g}, gate {verdict} ({cats})"
