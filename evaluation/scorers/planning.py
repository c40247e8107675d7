"""Planning: a bead hierarchy for a goal, scored on its dependency graph.

``plan`` takes the beads the agent created (and their edges among themselves and to the
fixture's beads). Fewer than ``min_beads`` new beads scores 0. Otherwise four parts:

- ``cycle_free`` (20): the ``blocks`` graph has no cycle;
- ``parallelism`` (30): tasks ÷ critical-path length (the longest chain of blocking
  dependencies, in beads), scaled so that reaching ``min_parallelism`` gives the full part;
- ``direction`` (40): for each ``[earlier, later]`` pair of title words, the bead matching
  ``later`` depends (transitively) on the one matching ``earlier`` — never the reverse;
- ``under_parent`` (10): when ``parent`` is given (or ``epic``: a new epic is asked for),
  every new task is linked (parent-child) to that bead or to a new epic.

The task passes at 100.
"""

from __future__ import annotations

from evaluation.scorers.common import Attempt, Params, Score, words_in


class Plan(Params):
    min_beads: int = 3
    min_parallelism: float = 1.5
    order: list[tuple[list[str], list[str]]] = []
    parent: str | None = None
    epic: bool = False


def blocking_graph(beads: list[dict]) -> dict[str, set[str]]:
    """id -> ids it depends on by a blocking edge, among ``beads``."""
    ids = {b["id"] for b in beads}
    return {
        b["id"]: {
            d["depends_on_id"]
            for d in b.get("dependencies") or []
            if d.get("type", "blocks") in ("blocks", "") and d["depends_on_id"] in ids
        }
        for b in beads
    }


def longest_chain(graph: dict[str, set[str]]) -> int | None:
    """Beads on the longest dependency chain (None: the graph has a cycle)."""
    depth: dict[str, int] = {}
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str) -> int | None:
        if state.get(node) == 2:
            return depth[node]
        if state.get(node) == 1:
            return None
        state[node] = 1
        best = 0
        for dep in graph.get(node, ()):
            d = visit(dep)
            if d is None:
                return None
            best = max(best, d)
        state[node], depth[node] = 2, best + 1
        return depth[node]

    longest = 0
    for node in graph:
        d = visit(node)
        if d is None:
            return None
        longest = max(longest, d)
    return longest


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo += graph.get(node, ())
    return False


def plan(p: Plan, attempt: Attempt) -> Score:
    new = attempt.new_beads()
    tasks = [b for b in new if b.get("issue_type") != "epic"]
    if len(tasks) < p.min_beads:
        return Score(0.0, {"new_tasks": len(tasks), "min_beads": p.min_beads})
    graph = blocking_graph(tasks)
    chain = longest_chain(graph)
    parts: dict[str, float] = {"cycle_free": 20.0 if chain is not None else 0.0}
    ratio = len(tasks) / chain if chain else 0.0
    parts["parallelism"] = 30.0 * min(1.0, ratio / p.min_parallelism)
    if p.order:
        good = 0
        for earlier, later in p.order:
            a = [b["id"] for b in tasks if words_in(b["title"], earlier)]
            z = [b["id"] for b in tasks if words_in(b["title"], later)]
            forward = any(_reaches(graph, x, y) for x in z for y in a)
            backward = any(_reaches(graph, y, x) for x in z for y in a)
            good += forward and not backward
        parts["direction"] = 40.0 * good / len(p.order)
    else:
        parts["direction"] = 40.0
    if p.parent is not None or p.epic:
        roots = {p.parent} | {b["id"] for b in new if b.get("issue_type") == "epic"}
        linked = sum(
            1
            for b in tasks
            if any(
                d.get("type") == "parent-child" and d["depends_on_id"] in roots
                for d in b.get("dependencies") or []
            )  # fmt: skip
        )
        parts["under_parent"] = 10.0 * linked / len(tasks)
    else:
        parts["under_parent"] = 10.0
    total = round(sum(parts.values()), 2)
    return Score(total, {**{k: round(v, 2) for k, v in parts.items()}, "tasks": len(tasks),
                         "critical_path": chain, "parallelism_ratio": round(ratio, 3)})  # fmt: skip


SCORERS = {"plan": (Plan, plan)}
