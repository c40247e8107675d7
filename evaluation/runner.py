"""Run one eval task: its sandbox, the agent tool loop on the model, its score.

Per task: build the sandbox (:mod:`evaluation.sandbox`), let the scorer record its baseline,
run **the** tool loop (:class:`~inference.tool_agent.ToolAgent` over
:func:`~inference.tool_loop.run_tool_loop`: the same loop as ``node0-inference --tools``) with
the suite's tools, guardrails and limits in the sandbox, then score the sandbox and the calls.
The transcript (every call and output, ``gastown.transcript/1``) and the result go to the run
directory. A model failure (a stage lost for good) is the task's failure, recorded with its
message; the run goes on.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from base.atomic import atomic_write
from base.errors import Node0Error
from evaluation.sandbox import Sandbox, create_sandbox
from evaluation.scorers import Attempt, prepare, score
from evaluation.task import Suite, Task
from inference.guardrails import CommandPolicy, GuardrailsConfig
from inference.tool_agent import ToolAgent
from inference.tool_calls import ToolCallFormat
from inference.tool_loop import LoopLimits, LoopResult, Model
from inference.tools import Toolbox, ToolLimits
from inference.transcript import SessionTranscript

log = logging.getLogger(__name__)

Session = Callable[[], AbstractAsyncContextManager[Model]]
"""A fresh model session per task (``async with session() as model``)."""


@dataclass
class TaskResult:
    """One task's outcome (``tasks/<id>.json`` in the run directory)."""

    id: str
    category: str
    score: float
    passed: bool
    checks: dict[str, Any] = field(default_factory=dict)
    stop_reason: str | None = None
    steps: int = 0
    tool_calls: int = 0
    denied: int = 0
    elapsed_s: float = 0.0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def attempt_of(box: Sandbox, result: LoopResult | None) -> Attempt:
    """What the scorers see of a loop run in ``box`` (None: the model never answered)."""
    attempt = Attempt(box)
    if result is None:
        attempt.stop_reason = "error"
        return attempt
    for call, outcome in result.calls:
        args = call.argument_object()
        attempt.tool_calls.append((call.name, args))
        line = args.get("command") if call.name == "bash" else args.get("path")
        if not isinstance(line, str):
            continue
        if outcome.denied is not None:
            attempt.denied.append((line, outcome.denied))
        elif call.name == "bash":
            attempt.commands.append(line)
    attempt.answer = result.answer
    attempt.stop_reason = result.stop_reason
    return attempt


async def run_task(
    task: Task,
    suite: Suite,
    session: Session,
    fmt: ToolCallFormat,
    *,
    guardrails: GuardrailsConfig,
    out_dir: Path,
    isolation: str = "auto",
    keep_sandbox: bool = False,
) -> TaskResult:
    """Run ``task`` once and score it; the transcript and result are written in ``out_dir``
    (``transcripts/<id>.jsonl``, ``tasks/<id>.json``)."""
    cfg = suite.config
    limits = cfg.limits
    started = time.monotonic()
    box = create_sandbox(task.fixture, suite.path, isolation=isolation)
    try:
        prepare(task.scorer, box)
        toolbox = Toolbox(
            box.work,
            cfg.tools,
            policy=CommandPolicy.from_config(guardrails),
            limits=ToolLimits(limits.command_timeout_s, limits.max_output_bytes),
            env=box.env(),
            shell=box.shell(),
        )
        transcript = SessionTranscript(rig="gastown", role=_role(task.role), task=task.id)
        result, error = None, None
        loop_limits = LoopLimits(task.max_steps or limits.max_steps, limits.time_limit_s)
        try:
            async with session() as model:
                agent = ToolAgent(model, toolbox, fmt, system=cfg.system.format(role=task.role),
                                  limits=loop_limits, transcript=transcript)  # fmt: skip
                result = await agent.ask(task.prompt)
        except Node0Error as exc:
            error = str(exc).splitlines()[0]
            log.warning("task %s: model failed: %s", task.id, error)
        graded = score(task.scorer, attempt_of(box, result))
        outcome = TaskResult(
            id=task.id,
            category=task.category,
            score=graded.score,
            # a loop stopped by its step or time limit never finished the task: a fail
            passed=graded.score >= task.pass_score
            and error is None
            and result is not None
            and result.stop_reason == "answer",
            checks=graded.checks,
            stop_reason=result.stop_reason if result else None,
            steps=result.steps if result else 0,
            tool_calls=len(result.calls) if result else 0,
            denied=result.denied if result else 0,
            elapsed_s=round(time.monotonic() - started, 2),
            error=error,
        )
        transcript.append_to(out_dir / "transcripts" / f"{task.id}.jsonl",
                             outcome="success" if outcome.passed else "failure")  # fmt: skip
        (out_dir / "tasks").mkdir(parents=True, exist_ok=True)
        atomic_write(out_dir / "tasks" / f"{task.id}.json",
                     json.dumps(outcome.to_json(), indent=2, default=str).encode())  # fmt: skip
        return outcome
    finally:
        if not keep_sandbox:
            box.remove()


def _role(role: str) -> str:
    from gastown.roles import ROLES

    return role if role in ROLES else "crew"


async def run_tasks(
    tasks: list[Task],
    suite: Suite,
    session: Session,
    fmt: ToolCallFormat,
    *,
    guardrails: GuardrailsConfig,
    out_dir: Path,
    isolation: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> AsyncIterator[TaskResult]:
    """Run ``tasks`` in order; ``progress`` gets one line per task (k/N, category, ETA)."""
    begun = time.monotonic()
    for k, task in enumerate(tasks, 1):
        if progress is not None:
            done = time.monotonic() - begun
            eta = f"{done / (k - 1) * (len(tasks) - k + 1):.0f}s" if k > 1 else "?"
            progress(f"task {k}/{len(tasks)} {task.category}: {task.id} (ETA {eta})")
        result = await run_task(task, suite, session, fmt, guardrails=guardrails,
                                out_dir=out_dir, isolation=isolation)  # fmt: skip
        if progress is not None:
            verdict = "pass" if result.passed else "fail"
            progress(f"  {verdict} {result.score:g}/100 ({result.stop_reason}, {result.steps} "
                     f"steps, {result.tool_calls} calls, {result.elapsed_s:.0f}s)")  # fmt: skip
        yield result
