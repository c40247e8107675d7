"""Convention adherence: violations counted against Gas Town's rules and the rig's CLAUDE.md.

``conventions`` reads the commands the agent ran (``source: commands``), the commands its
answer proposes (``$ cmd`` lines, inline code, fenced blocks; ``source: answer``) or both.
The task must be done the Gas Town way — every ``required`` pattern matched by some command —
or it scores 0. Then each ``forbidden`` pattern a command matches (a raw shell equivalent of a
``bd``/``gt`` command, ``pkill``, a push to main, editing ``.beads/`` by hand…) and each call
the guardrails refused is one violation, and so is each use of a tool in
``forbidden_tools`` (a witness that writes code). Score: ``max(0, 100 - penalty × violations)``;
the task passes with none.
"""

from __future__ import annotations

import re
from typing import Literal

from evaluation.scorers.common import Attempt, Params, Score, answer_commands
from inference.shell_parse import ShellSyntaxError, simple_commands


class Conventions(Params):
    required: list[str]
    forbidden: list[str] = []
    forbidden_tools: list[str] = []
    source: Literal["commands", "answer", "both"] = "both"
    penalty: float = 50.0


def _lines(p: Conventions, attempt: Attempt) -> list[str]:
    lines: list[str] = []
    if p.source in ("commands", "both"):
        lines += attempt.commands + [c for c, _ in attempt.denied]
        lines += [str(a.get("path", "")) for n, a in attempt.tool_calls if n == "write_file"]
    if p.source in ("answer", "both"):
        lines += answer_commands(attempt.answer)
    return lines


def _forms(line: str) -> list[str]:
    """A command line as written, and each simple command it runs (``a; b`` -> ``a``, ``b``;
    quotes removed), so that ``^bd ready`` matches ``cd x && bd ready``."""
    try:
        return [line, *(" ".join(c.words) for c in simple_commands(line))]
    except ShellSyntaxError:
        return [line]


def _matches(pattern: str, line: str) -> bool:
    return any(re.search(pattern, form) for form in _forms(line))


def conventions(p: Conventions, attempt: Attempt) -> Score:
    lines = _lines(p, attempt)
    missing = [r for r in p.required if not any(_matches(r, line) for line in lines)]
    if missing:
        return Score(0.0, {"missing": missing, "commands": lines[:20]})
    violations: dict[str, int] = {}
    for pattern in p.forbidden:
        n = sum(1 for line in lines if _matches(pattern, line))
        if n:
            violations[pattern] = n
    for _, rule in attempt.denied:
        violations[f"guardrail {rule}"] = violations.get(f"guardrail {rule}", 0) + 1
    for name in p.forbidden_tools:
        n = sum(1 for tool, _ in attempt.tool_calls if tool == name)
        if n:
            violations[f"tool {name}"] = n
    count = sum(violations.values())
    return Score(max(0.0, 100.0 - p.penalty * count), {"violations": count, **violations})


SCORERS = {"conventions": (Conventions, conventions)}
