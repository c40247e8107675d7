"""The agent tool loop: the model calls tools in its own syntax until it answers.

One implementation for every caller (``node0-inference --tools`` today, the eval suite later):
:func:`run_tool_loop` takes plain arguments and a :data:`Model`, any async callable that
answers a list of plain ``system``/``user``/``assistant`` messages (in production
:func:`conversation_model`, a :class:`~inference.conversation.Conversation` on the swarm; in
tests a script). Each step:

1. the history (OpenAI-style: assistant messages with ``tool_calls``, ``tool`` results) is
   rendered in the family's tool-call syntax with the tools offered in the system message
   (:func:`~inference.tool_calls.with_tools`);
2. the model's reply is parsed as it streams (:meth:`ToolCallFormat.stream`): text outside calls
   goes to ``on_event`` as it is released, each call when its block closes;
3. without a call the reply is the answer and the loop ends (``stop_reason="answer"``);
   otherwise each call runs in the :class:`~inference.tools.Toolbox` (guardrails first) and its
   result joins the history as a ``tool`` message, and the next step begins.

The loop also ends when ``max_steps`` replies have all called tools (``"max_steps"``) or the
``time_limit_s`` has passed (``"time_limit"``: a reply or command still running is cancelled,
a command's group killed). A refused call is not an error: its reason is the tool's result, so
the model can try another way, and it is counted in :attr:`LoopResult.denied`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from inference.tool_calls import ReplyEvent, ToolCall, ToolCallFormat, with_tools
from inference.tools import Toolbox, ToolOutcome


class Reply(Protocol):
    """What a model step returns (a :class:`~inference.conversation.TurnResult` is one)."""

    text: str
    finish_reason: str


Model = Callable[[list[dict[str, str]], Callable[[str], None]], Awaitable[Reply]]
"""``await model(messages, on_text)``: the reply to ``messages``, its text streamed to
``on_text`` as it is generated."""


@dataclass(frozen=True)
class LoopLimits:
    """When the loop gives up: model replies per run, and seconds per run."""

    max_steps: int = 8
    time_limit_s: float = 600.0


DEFAULT_LIMITS = LoopLimits()


@dataclass(frozen=True)
class TextEvent:
    """Text of the model's reply at ``step`` (outside tool calls), as it is released."""

    step: int
    text: str


@dataclass(frozen=True)
class ToolCallEvent:
    """The model called a tool at ``step``."""

    step: int
    call: ToolCall

    def to_json(self) -> dict[str, Any]:
        """The ``tool_call`` event of ``node0-inference --json``."""
        c = self.call
        return {"type": "tool_call", "step": self.step, "id": c.id, "name": c.name,
                "arguments": c.argument_object()}  # fmt: skip


@dataclass(frozen=True)
class ToolResultEvent:
    """A tool call's outcome, as it went back to the model."""

    step: int
    call: ToolCall
    outcome: ToolOutcome

    def to_json(self) -> dict[str, Any]:
        """The ``tool_result`` event of ``node0-inference --json``."""
        o = self.outcome
        return {
            "type": "tool_result",
            "step": self.step,
            "id": self.call.id,
            "name": self.call.name,
            "output": o.output,
            "exit_code": o.exit_code,
            "denied": o.denied,
            "timed_out": o.timed_out,
            "truncated_bytes": o.truncated_bytes,
        }


LoopEvent = TextEvent | ToolCallEvent | ToolResultEvent


@dataclass
class LoopResult:
    """How a run of the loop ended.

    Attributes:
        stop_reason: ``"answer"`` (a reply without a call), ``"max_steps"`` or ``"time_limit"``.
        answer: the final reply's text (None unless ``stop_reason`` is ``"answer"``).
        messages: the history after the run (OpenAI-style, tool traffic included).
        steps: model replies requested (a reply cut by the time limit counts).
        calls: every call and its outcome, in order.
        replies: every finished model reply, in order.
        parse_errors: why call-like text in a reply was not read as a call.
        elapsed: seconds of the run.
    """

    stop_reason: str
    answer: str | None
    messages: list[dict]
    steps: int
    calls: list[tuple[ToolCall, ToolOutcome]] = field(default_factory=list)
    replies: list[Any] = field(default_factory=list)
    parse_errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def denied(self) -> int:
        """Calls the guardrails refused."""
        return sum(1 for _, outcome in self.calls if outcome.denied is not None)

    @property
    def denials(self) -> dict[str, int]:
        """Refused calls per rule id."""
        return dict(Counter(o.denied for _, o in self.calls if o.denied is not None))


async def run_tool_loop(
    model: Model,
    messages: Sequence[dict],
    toolbox: Toolbox,
    fmt: ToolCallFormat,
    *,
    limits: LoopLimits = DEFAULT_LIMITS,
    on_event: Callable[[LoopEvent], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> LoopResult:
    """Run the loop from ``messages`` (ending with the user's request) until it stops.

    Args:
        model: answers rendered messages (see :data:`Model`).
        messages: the history so far, OpenAI-style (``tool_calls``, ``tool`` messages allowed).
        toolbox: the tools offered and their executors (working directory, guardrails).
        fmt: the model family's tool-call syntax (``ConversationEngine.tool_format``).
        limits: step and time limits of this run.
        on_event: gets each :data:`LoopEvent` as it happens.
        clock: seconds, for the time limit (tests pass a fake one).

    Raises:
        whatever ``model`` raises (e.g. :class:`~base.errors.Node0Error`); the history up to
        the failed step is lost with it.
    """
    emit = on_event or (lambda event: None)
    start = clock()
    result = LoopResult("max_steps", None, [dict(m) for m in messages], 0)

    def remaining() -> float:
        return limits.time_limit_s - (clock() - start)

    while result.steps < limits.max_steps:
        if remaining() <= 0:
            result.stop_reason = "time_limit"
            break
        step = result.steps = result.steps + 1
        try:
            async with asyncio.timeout(remaining()):
                done = await _step(model, result, toolbox, fmt, step, emit, remaining)
        except TimeoutError:
            result.stop_reason = "time_limit"
            break
        if done:
            result.stop_reason = "answer"
            break
    result.elapsed = clock() - start
    return result


async def _step(
    model: Model,
    result: LoopResult,
    toolbox: Toolbox,
    fmt: ToolCallFormat,
    step: int,
    emit: Callable[[LoopEvent], None],
    remaining: Callable[[], float],
) -> bool:
    """One reply and its calls; True when the reply is the answer."""
    parser = fmt.stream(toolbox.names)
    events: list[ReplyEvent] = []

    def on_text(chunk: str) -> None:
        for event in parser.feed(chunk):
            events.append(event)
            if event.call is None and event.text:
                emit(TextEvent(step, event.text))

    prompt = with_tools(result.messages, fmt, toolbox.specs)
    reply = await model(prompt, on_text)
    for event in parser.finish():
        events.append(event)
        if event.call is None and event.text:
            emit(TextEvent(step, event.text))
    result.replies.append(reply)
    result.parse_errors += [e.error for e in events if e.error]
    calls = [e.call for e in events if e.call is not None]
    content = "".join(e.text for e in events if e.call is None)
    if not calls:
        result.messages.append({"role": "assistant", "content": content})
        result.answer = content
        return True
    result.messages.append({"role": "assistant", "content": content.strip(), "tool_calls": calls})
    for call in calls:
        emit(ToolCallEvent(step, call))
        outcome = await toolbox.run(call, timeout=max(remaining(), 0.001))
        result.calls.append((call, outcome))
        result.messages.append(
            {"role": "tool", "tool_call_id": call.id, "content": outcome.model_text()}
        )
        emit(ToolResultEvent(step, call, outcome))
    return False


def conversation_model(conversation, settings) -> Model:
    """The :data:`Model` of a :class:`~inference.conversation.Conversation`: each step is
    :meth:`~inference.conversation.Conversation.respond` (its history left alone; the prefix its
    stages cache from the previous step is not sent again)."""

    async def reply(messages: list[dict[str, str]], on_text: Callable[[str], None]) -> Reply:
        return await conversation.respond(messages, settings, on_text=on_text)

    return reply
