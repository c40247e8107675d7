"""What every scorer sees (:class:`Attempt`) and returns (:class:`Score`), and shared readers.

A scorer is ``score(params, attempt) -> Score``: ``params`` its validated pydantic model (the
task's ``scorer:`` mapping), ``attempt`` what the agent did — the sandbox after the run (files,
git, beads, recorded bd/gt calls) and the loop's tool calls and answer. A score is 0-100 with
the checks that made it, so the transcript says why a task failed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from evaluation.beads_store import current
from evaluation.sandbox import Sandbox
from inference.shell_parse import ShellSyntaxError, SimpleCommand, simple_commands


class Params(BaseModel):
    """Base of every scorer's parameters: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str


@dataclass
class Attempt:
    """What the agent did in one task.

    Attributes:
        sandbox: the sandbox after the run.
        commands: bash command lines that ran, in order.
        denied: (command line or path, rule) of each call the guardrails refused.
        tool_calls: (tool name, arguments) of every call, in order.
        answer: the final answer (None: the loop stopped at a limit).
        stop_reason: ``answer``, ``max_steps`` or ``time_limit``.
    """

    sandbox: Sandbox
    commands: list[str] = field(default_factory=list)
    denied: list[tuple[str, str]] = field(default_factory=list)
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    answer: str | None = None
    stop_reason: str = "answer"

    def beads(self) -> dict[str, dict[str, Any]]:
        """The newest version of every bead in the rig now."""
        return current(self.sandbox.work)

    def new_beads(self) -> list[dict[str, Any]]:
        """Beads whose id the fixture did not have, in creation order."""
        before = set(self.sandbox.initial.get("bead_ids", ()))
        return [b for k, b in self.beads().items() if k not in before]

    def simple_commands(self, *, attempted: bool = False) -> list[SimpleCommand]:
        """The simple commands of every command line that ran (``attempted``: refused ones
        too)."""
        lines = list(self.commands) + ([c for c, _ in self.denied] if attempted else [])
        out: list[SimpleCommand] = []
        for line in lines:
            try:
                out += simple_commands(line)
            except ShellSyntaxError:
                continue
        return out


@dataclass
class Score:
    """0-100, with each check's outcome (name -> value) for the report."""

    score: float
    checks: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of_checks(cls, checks: dict[str, bool], **extra: Any) -> Score:
        """The share of ``checks`` that hold, as a percentage."""
        value = 100.0 * sum(checks.values()) / len(checks) if checks else 0.0
        return cls(round(value, 2), {**checks, **extra})


def words_in(text: str | None, words: list[str]) -> bool:
    """Every word of ``words`` occurs in ``text`` (case-insensitive); False for no text."""
    if not text:
        return False
    low = text.lower()
    return all(w.lower() in low for w in words)


ANSWER_COMMAND = re.compile(r"^\s*(?:\$\s+)(.+)$|`([^`\n]+)`", re.MULTILINE)


def answer_commands(text: str | None) -> list[str]:
    """Command lines an answer proposes: ``$ cmd`` lines, inline `code`, and lines of fenced
    code blocks."""
    if not text:
        return []
    out: list[str] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.DOTALL):
        out += [line.strip().removeprefix("$ ") for line in block.splitlines() if line.strip()]
    text = re.sub(r"```[a-z]*\n.*?```", "", text, flags=re.DOTALL)
    for dollar, inline in ANSWER_COMMAND.findall(text):
        out.append((dollar or inline).strip())
    return out
