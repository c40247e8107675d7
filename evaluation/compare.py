"""``node0 eval compare RUN_A RUN_B``: is B better than A on the same tasks?

Paired by task id (tasks in only one run are listed and left out). Per task: both pass, both
fail, or discordant — ``A only`` (b) or ``B only`` (c). The exact McNemar test is the two-sided
binomial test of min(b, c) among b + c discordant tasks at p = 1/2
(``scipy.stats.binomtest``); with no discordant task, p = 1. Per category: the difference in
percent passed (B − A) with a 95% confidence interval for paired proportions (Wald, on the
discordant counts: d = (c − b)/n, se = √(b + c − (c − b)²/n)/n). The verdict follows seed
``000``'s rule: B is better only if c > b and p < alpha; worse only if b > c and p < alpha;
otherwise no significant difference.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from scipy.stats import binomtest

from base.errors import DataError

Z95 = 1.959964


def read_scores(run: str | Path) -> dict[str, Any]:
    """The ``scores.json`` of an eval run directory.

    Raises:
        DataError: no scores.json, or one without per-task results.
    """
    path = Path(run) / "scores.json"
    try:
        scores = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if not isinstance(scores.get("tasks"), dict):
        raise DataError(f"{path} has no per-task results")
    return scores


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs."""
    if b + c == 0:
        return 1.0
    return float(binomtest(min(b, c), b + c, 0.5, alternative="two-sided").pvalue)


def paired_difference(b: int, c: int, n: int) -> tuple[float, float, float]:
    """(B − A, low, high) in percentage points, 95% Wald interval for paired proportions."""
    if n == 0:
        return 0.0, 0.0, 0.0
    d = (c - b) / n
    se = math.sqrt(max(0.0, (b + c) - (c - b) ** 2 / n)) / n
    return 100 * d, 100 * (d - Z95 * se), 100 * (d + Z95 * se)


def compare_runs(run_a: str | Path, run_b: str | Path, *, alpha: float = 0.05) -> dict[str, Any]:
    """The paired comparison of two eval runs (see the module doc)."""
    a, b = read_scores(run_a), read_scores(run_b)
    ta, tb = a["tasks"], b["tasks"]
    shared = [t for t in ta if t in tb]
    tasks: dict[str, str] = {}
    per_cat: dict[str, dict[str, int]] = {}
    for tid in shared:
        pa, pb = bool(ta[tid]["passed"]), bool(tb[tid]["passed"])
        kind = {(True, True): "both", (False, False): "neither", (True, False): "a_only",
                (False, True): "b_only"}[(pa, pb)]  # fmt: skip
        tasks[tid] = kind
        cat = per_cat.setdefault(ta[tid]["category"], {"n": 0, "a_only": 0, "b_only": 0,
                                                       "a_passed": 0, "b_passed": 0})  # fmt: skip
        cat["n"] += 1
        cat["a_passed"] += pa
        cat["b_passed"] += pb
        if kind in ("a_only", "b_only"):
            cat[kind] += 1
    b_only = sorted(t for t, k in tasks.items() if k == "b_only")
    a_only = sorted(t for t, k in tasks.items() if k == "a_only")
    p_value = mcnemar_exact(len(a_only), len(b_only))
    categories = {}
    for name, c in per_cat.items():
        delta, low, high = paired_difference(c["a_only"], c["b_only"], c["n"])
        categories[name] = {"a": round(100 * c["a_passed"] / c["n"], 2),
                            "b": round(100 * c["b_passed"] / c["n"], 2),
                            "delta": round(delta, 2), "ci95": [round(low, 2), round(high, 2)],
                            "n": c["n"], "a_only": c["a_only"], "b_only": c["b_only"]}  # fmt: skip
    if p_value < alpha and len(b_only) > len(a_only):
        verdict = "B better"
    elif p_value < alpha and len(a_only) > len(b_only):
        verdict = "A better"
    else:
        verdict = "no significant difference"
    return {
        "a": {
            "run": str(run_a),
            "model": a.get("model"),
            "adapters": a.get("adapters"),
            "composite": a.get("composite"),
        },
        "b": {
            "run": str(run_b),
            "model": b.get("model"),
            "adapters": b.get("adapters"),
            "composite": b.get("composite"),
        },
        "paired_tasks": len(shared),
        "only_in_a": sorted(set(ta) - set(tb)),
        "only_in_b": sorted(set(tb) - set(ta)),
        "discordant": {"a_only": a_only, "b_only": b_only},
        "both_passed": sum(k == "both" for k in tasks.values()),
        "neither_passed": sum(k == "neither" for k in tasks.values()),
        "mcnemar_p": p_value,
        "alpha": alpha,
        "categories": categories,
        "verdict": verdict,
    }


def compare_lines(result: dict[str, Any]) -> list[str]:
    """The comparison for a terminal."""
    a, b = result["a"], result["b"]
    lines = [f"A: {a['run']} ({a['model']}, adapters {a['adapters'] or '-'}, "
             f"composite {a['composite']})",
             f"B: {b['run']} ({b['model']}, adapters {b['adapters'] or '-'}, "
             f"composite {b['composite']})",
             f"paired tasks: {result['paired_tasks']}; both passed {result['both_passed']}, "
             f"neither {result['neither_passed']}, A only {len(result['discordant']['a_only'])}, "
             f"B only {len(result['discordant']['b_only'])}"]  # fmt: skip
    for name, c in result["categories"].items():
        lo, hi = c["ci95"]
        lines.append(f"  {name:22s} A {c['a']:6.1f}%  B {c['b']:6.1f}%  delta {c['delta']:+6.1f} "
                     f"[{lo:+.1f}, {hi:+.1f}]")  # fmt: skip
    for side in ("a_only", "b_only"):
        if result["discordant"][side]:
            who = "A" if side == "a_only" else "B"
            lines.append(f"  only {who} passed: {', '.join(result['discordant'][side])}")
    lines.append(f"exact McNemar p = {result['mcnemar_p']:.4g} (alpha {result['alpha']})")
    lines.append(f"verdict: {result['verdict']}")
    return lines
