"""An agent session with tools: one :func:`~inference.tool_loop.run_tool_loop` per prompt, the
history kept across prompts, every call and result in the transcript.

``node0-inference --tools`` drives one; so can the eval suite (plain arguments, any
:data:`~inference.tool_loop.Model`).

Transcript turns (``gastown.transcript/1``, extended additively — readers that know only
``speaker`` and ``text`` read them as before):

- the prompt: ``{"speaker": "user", "text": …}`` as given (without retrieved context);
- a reply that calls tools: ``{"speaker": "assistant", "text": <reply with its calls in the
  family's syntax>, "tool_calls": [{"id", "name", "arguments"}]}``;
- each result: ``{"speaker": "tool", "text": <what the model read>, "call_id", "name",
  "exit_code", "denied", "timed_out"}``;
- the answer: ``{"speaker": "assistant", "text": …}``.

The last turn of each prompt (the prompt itself when no reply finished) carries
``"stop_reason"`` (``answer``, ``max_steps`` or ``time_limit``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from base.errors import Node0Error
from inference.tool_calls import ToolCallFormat
from inference.tool_loop import (
    DEFAULT_LIMITS,
    LoopEvent,
    LoopLimits,
    LoopResult,
    Model,
    run_tool_loop,
)
from inference.tools import Toolbox, ToolOutcome
from inference.transcript import SessionTranscript

Augment = Callable[[str], Awaitable[str]]
"""Turns a prompt into the user message the model reads (e.g. retrieved context in front)."""


class ToolAgent:
    """A conversation whose prompts run the tool loop.

    Args:
        model: answers rendered messages (:func:`~inference.tool_loop.conversation_model`).
        toolbox: the tools offered, their working directory and guardrails.
        fmt: the model family's tool-call syntax.
        system: the system message (the tools are offered after it).
        limits: step and time limits per prompt.
        transcript: records prompts, replies, calls and results (None: not recorded).
        augment: makes the user message of a prompt (None: the prompt as it is).
    """

    def __init__(
        self,
        model: Model,
        toolbox: Toolbox,
        fmt: ToolCallFormat,
        *,
        system: str | None = None,
        limits: LoopLimits = DEFAULT_LIMITS,
        transcript: SessionTranscript | None = None,
        augment: Augment | None = None,
    ) -> None:
        self.model = model
        self.toolbox = toolbox
        self.fmt = fmt
        self.limits = limits
        self.transcript = transcript
        self.augment = augment
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        if transcript is not None and system:
            transcript.add("system", system)
        self._opening_turns = len(transcript.turns) if transcript is not None else 0

    async def ask(
        self, prompt: str, on_event: Callable[[LoopEvent], None] | None = None
    ) -> LoopResult:
        """Run the loop on ``prompt``; the history keeps its calls, results and answer.

        A failed run (a :class:`~base.errors.Node0Error` from the model) leaves the history as
        it was, counts an error in the transcript, and is raised.
        """
        if self.transcript is not None:
            self.transcript.add("user", prompt)
        text = await self.augment(prompt) if self.augment is not None else prompt
        before = [*self.messages, {"role": "user", "content": text}]
        try:
            result = await run_tool_loop(
                self.model, before, self.toolbox, self.fmt, limits=self.limits, on_event=on_event
            )
        except Node0Error:
            if self.transcript is not None:
                self.transcript.errors += 1
            raise
        self.messages = result.messages
        if self.transcript is not None:
            self._record(result, len(before))
        return result

    def save_transcript(self, path: Path, *, outcome: str | None = None) -> dict | None:
        """Append the transcript to ``path`` if a prompt was recorded; returns the record
        written (None: nothing to write)."""
        if self.transcript is None or len(self.transcript.turns) <= self._opening_turns:
            return None
        return self.transcript.append_to(path, outcome=outcome)

    def _record(self, result: LoopResult, start: int) -> None:
        outcomes: dict[str, ToolOutcome] = {call.id: outcome for call, outcome in result.calls}
        names = {call.id: call.name for call, _ in result.calls}
        for message in result.messages[start:]:
            extra: dict[str, Any] = {}
            if message["role"] == "tool":
                call_id = message["tool_call_id"]
                outcome = outcomes[call_id]
                extra = {"call_id": call_id, "name": names[call_id],
                         "exit_code": outcome.exit_code, "denied": outcome.denied,
                         "timed_out": outcome.timed_out}  # fmt: skip
                self.transcript.add("tool", message["content"], **extra)
            elif message.get("tool_calls"):
                calls = message["tool_calls"]
                blocks = [self.fmt.render_call(c) for c in calls]
                text = "\n".join([message["content"], *blocks] if message["content"] else blocks)
                extra = {"tool_calls": [
                    {"id": c.id, "name": c.name, "arguments": c.argument_object()} for c in calls
                ]}  # fmt: skip
                self.transcript.add("assistant", text, **extra)
            else:
                self.transcript.add(message["role"], message["content"])
        self.transcript.turns[-1]["stop_reason"] = result.stop_reason
