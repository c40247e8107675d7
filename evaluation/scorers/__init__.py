"""Scorers by ``kind``: each task's ``scorer:`` mapping names one and gives its parameters.

| kind | category | module |
|---|---|---|
| ``bead_created``, ``bead_updated``, ``bead_epic``, ``bead_deps`` | bead management | beads |
| ``git_steps`` | git workflow | git |
| ``conventions`` | convention adherence | conventions |
| ``plan`` | planning | planning |
| ``pytest`` | code execution | code |
| ``answer_contains`` | any (the answer's words) | common |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from evaluation.sandbox import Sandbox
from evaluation.scorers import beads, code, conventions, git, planning
from evaluation.scorers.common import Attempt, Params, Score, words_in


class AnswerContains(Params):
    words: list[str]


def answer_contains(p: AnswerContains, attempt: Attempt) -> Score:
    return Score.of_checks({"answer": words_in(attempt.answer, p.words)})


SCORERS: dict[str, tuple[type[Params], Callable[[Any, Attempt], Score]]] = {
    **beads.SCORERS,
    **git.SCORERS,
    **conventions.SCORERS,
    **planning.SCORERS,
    **code.SCORERS,
    "answer_contains": (AnswerContains, answer_contains),
}
PREPARE: dict[str, Callable[[Any, Sandbox], None]] = dict(code.PREPARE)


def check_spec(spec: dict[str, Any]) -> Params:
    """The validated parameters of a task's ``scorer:`` mapping.

    Raises:
        ValueError: an unknown kind or a bad parameter (naming it).
    """
    kind = spec.get("kind")
    if kind not in SCORERS:
        raise ValueError(f"unknown scorer kind {kind!r}; known: {', '.join(SCORERS)}")
    try:
        return SCORERS[kind][0].model_validate(spec)
    except ValidationError as exc:
        raise ValueError(str(exc)) from exc


def prepare(spec: dict[str, Any], box: Sandbox) -> None:
    """What a scorer records in the sandbox before the model acts (e.g. a test baseline)."""
    hook = PREPARE.get(spec["kind"])
    if hook is not None:
        hook(check_spec(spec), box)


def score(spec: dict[str, Any], attempt: Attempt) -> Score:
    """Score ``attempt`` with the task's scorer."""
    params = check_spec(spec)
    return SCORERS[spec["kind"]][1](params, attempt)


__all__ = ["Attempt", "SCORERS", "Score", "check_spec", "prepare", "score"]
