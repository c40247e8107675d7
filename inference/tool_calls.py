"""Tool calls in a model's own syntax: offering tools in the prompt, rendering past calls and
their results, and parsing calls out of a reply (whole or as it streams).

One implementation for every front end: the OpenAI API (``tools`` / ``tool_calls`` / ``tool``
messages) and the agent tool loop use the same :class:`ToolCallFormat`, chosen by the model
family (``ModelFamily.tool_call_format``) through :func:`format_for`.

The one format today is ``hermes``: the syntax of Qwen2/2.5's chat templates, Hermes
fine-tunes and SmolLM2, and the one vLLM's ``hermes`` parser reads::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

Tools are offered in the system message as JSON schemas inside ``<tools></tools>``; results go
back in a user turn inside ``<tool_response></tool_response>``. Rendering this ourselves, rather
than through a template's ``tools=`` argument, works for templates without tool support
(SmolLM2's) and in completion mode, and keeps the training formatter and the server on one text.

A reply that opens a call the parser cannot read (not JSON, no name, a tool that was not
offered) is not a call: its raw text stays in the content, and :attr:`ParsedReply.error` says
why. Parsing never raises on model output.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from base.errors import RequestError

TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call (OpenAI's ``tools[i].function``).

    Attributes:
        name: the function's name (letters, digits, ``_`` and ``-``; at most 64).
        description: what it does, for the model.
        parameters: its arguments as a JSON schema (an object schema).
    """

    name: str
    description: str = ""
    parameters: dict = field(default_factory=lambda: {"type": "object", "properties": {}})

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not TOOL_NAME.match(self.name):
            raise RequestError(f"bad tool name {self.name!r}: use 1-64 letters, digits, '_' or '-'")

    def schema(self) -> dict:
        """The OpenAI tool object (``{"type": "function", "function": {...}}``)."""
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = self.parameters
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolCall:
    """One call the model made.

    Attributes:
        id: the call's id (``call_…``), which the tool result names.
        name: the function called.
        arguments: its arguments as JSON text (an object).
    """

    id: str
    name: str
    arguments: str

    @classmethod
    def new(cls, name: str, arguments: dict) -> ToolCall:
        """A call with a fresh id and ``arguments`` as compact JSON."""
        text = json.dumps(arguments, ensure_ascii=False)
        return cls(f"call_{secrets.token_hex(12)}", name, text)

    def argument_object(self) -> dict:
        """The arguments as a dict (``{}`` when they are not a JSON object)."""
        try:
            value = json.loads(self.arguments) if self.arguments.strip() else {}
        except json.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class ToolResult:
    """What a tool printed, for the call ``call_id`` (an OpenAI ``tool`` message)."""

    call_id: str
    content: str
    name: str | None = None


@dataclass(frozen=True)
class ParsedReply:
    """A reply split into its text and its tool calls.

    Attributes:
        content: the text outside well-formed calls (with the raw text of a malformed one).
        tool_calls: the calls, in order.
        error: why a call-like block was kept as text (None: every block parsed).
    """

    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class ReplyEvent:
    """A piece of a streamed reply: ``text`` to show, or a finished ``call``."""

    text: str = ""
    call: ToolCall | None = None
    error: str | None = None


class HermesFormat:
    """``<tool_call>{"name": …, "arguments": {…}}</tool_call>`` (see the module docstring)."""

    name = "hermes"
    open_tag = "<tool_call>"
    close_tag = "</tool_call>"

    def system_prompt(self, tools: Sequence[ToolSpec]) -> str:
        """The block appended to the system message that offers ``tools``."""
        schemas = "\n".join(json.dumps(t.schema(), ensure_ascii=False) for t in tools)
        return (
            "# Tools\n\n"
            "You may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n"
            f"<tools>\n{schemas}\n</tools>\n\n"
            "For each function call, return a json object with function name and arguments "
            "within <tool_call></tool_call> XML tags:\n"
            "<tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n'
            "</tool_call>"
        )

    def render_call(self, call: ToolCall) -> str:
        """A past call as the model would have written it."""
        body = {"name": call.name, "arguments": call.argument_object()}
        return f"{self.open_tag}\n{json.dumps(body, ensure_ascii=False)}\n{self.close_tag}"

    def render_results(self, results: Sequence[ToolResult]) -> str:
        """Consecutive tool results as the text of one user turn."""
        return "\n".join(f"<tool_response>\n{r.content}\n</tool_response>" for r in results)

    def forced_prefix(self, name: str | None) -> str:
        """The start of a reply that must be a call (to ``name``, or to any tool)."""
        if name is None:
            return f'{self.open_tag}\n{{"name": "'
        return f'{self.open_tag}\n{{"name": {json.dumps(name)}, "arguments": '

    def stream(self, tools: Iterable[str] | None = None) -> ReplyStream:
        """A parser for one reply, fed as it is generated."""
        return ReplyStream(self, None if tools is None else frozenset(tools))

    def parse(self, text: str, tools: Iterable[str] | None = None) -> ParsedReply:
        """``text`` (a whole reply) split into content and calls."""
        parser = self.stream(tools)
        return collect([*parser.feed(text), *parser.finish()])

    def read_call(self, body: str, tools: frozenset[str] | None) -> ToolCall | str:
        """The call inside one ``<tool_call>`` block, or why there is none."""
        try:
            value = json.loads(body)
        except json.JSONDecodeError as exc:
            return f"the tool call is not valid JSON ({exc.msg} at {exc.pos})"
        if isinstance(value, list) and len(value) == 1:  # SmolLM2 writes a one-call list
            value = value[0]
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return "the tool call is not an object with a 'name'"
        name = value["name"]
        if tools is not None and name not in tools:
            return f"the model called {name!r}, which is not an offered tool"
        arguments = value.get("arguments", value.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError:
                return "the tool call's arguments are not valid JSON"
        if not isinstance(arguments, dict):
            return "the tool call's arguments are not a JSON object"
        return ToolCall.new(name, arguments)


class ReplyStream:
    """Parses one reply chunk by chunk: text is released as soon as it cannot be the start of
    a call, and a call when its block closes (or the reply ends inside it)."""

    def __init__(self, fmt: HermesFormat, tools: frozenset[str] | None) -> None:
        self.fmt = fmt
        self.tools = tools
        self._pending = ""  # text not yet released
        self._in_call = False

    def feed(self, chunk: str) -> list[ReplyEvent]:
        """Events for ``chunk``, the next piece of the reply."""
        self._pending += chunk
        events: list[ReplyEvent] = []
        while True:
            if not self._in_call:
                at = self._pending.find(self.fmt.open_tag)
                if at < 0:
                    keep = _partial_suffix(self._pending, self.fmt.open_tag)
                    release = self._pending[: len(self._pending) - keep]
                    if release:
                        events.append(ReplyEvent(text=release))
                    self._pending = self._pending[len(release) :]
                    return events
                if at:
                    events.append(ReplyEvent(text=self._pending[:at]))
                self._pending = self._pending[at:]
                self._in_call = True
            end = self._pending.find(self.fmt.close_tag)
            if end < 0:
                return events
            block = self._pending[: end + len(self.fmt.close_tag)]
            self._pending = self._pending[len(block) :]
            self._in_call = False
            events.append(self._call_event(block, closed=True))

    def finish(self) -> list[ReplyEvent]:
        """Events for what is left when the reply ends (an unclosed call is read as one)."""
        pending, self._pending = self._pending, ""
        if not pending:
            return []
        if self._in_call:
            self._in_call = False
            return [self._call_event(pending, closed=False)]
        return [ReplyEvent(text=pending)]

    def _call_event(self, block: str, *, closed: bool) -> ReplyEvent:
        body = block[len(self.fmt.open_tag) :]
        if closed:
            body = body[: -len(self.fmt.close_tag)]
        call = self.fmt.read_call(body.strip(), self.tools)
        if isinstance(call, str):
            return ReplyEvent(text=block, error=call)
        return ReplyEvent(call=call)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that is a proper start of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def collect(events: Iterable[ReplyEvent]) -> ParsedReply:
    """The :class:`ParsedReply` of a whole reply's events."""
    text, calls, errors = [], [], []
    for event in events:
        if event.call is not None:
            calls.append(event.call)
        else:
            text.append(event.text)
        if event.error:
            errors.append(event.error)
    content = "".join(text)
    if calls:  # the text around calls is mostly the newlines between blocks
        content = content.strip()
    return ParsedReply(content, tuple(calls), "; ".join(errors) or None)


FORMATS: dict[str, HermesFormat] = {"hermes": HermesFormat()}
"""Tool-call syntaxes by name (``ModelFamily.tool_call_format`` names one)."""

ToolCallFormat = HermesFormat


def format_for(family_name: str) -> ToolCallFormat:
    """The tool-call syntax of the model family ``family_name`` (``"llama"``, ``"qwen2"``)."""
    from models.registry import get_family

    key = get_family(family_name).tool_call_format
    try:
        return FORMATS[key]
    except KeyError:
        raise RequestError(
            f"model family {family_name!r} names tool-call format {key!r}, which node0 "
            f"does not parse; known formats: {sorted(FORMATS)}"
        ) from None


def with_tools(
    messages: Sequence[dict],
    fmt: ToolCallFormat,
    tools: Sequence[ToolSpec] = (),
) -> list[dict[str, str]]:
    """Messages with tool traffic as the engine's plain ``system``/``user``/``assistant``
    messages in ``fmt``'s syntax.

    ``messages`` may hold OpenAI-style entries: an assistant message with ``tool_calls``
    (:class:`ToolCall` objects), and ``tool`` messages (``content`` and ``tool_call_id``).
    With ``tools``, the first system message (a new one if there is none) offers them.
    Consecutive tool results become one user turn.
    """
    out: list[dict[str, str]] = []
    results: list[ToolResult] = []

    def flush() -> None:
        if results:
            out.append({"role": "user", "content": fmt.render_results(results)})
            results.clear()

    for message in messages:
        role = message.get("role")
        if role == "tool":
            results.append(
                ToolResult(message.get("tool_call_id", ""), message.get("content") or "")
            )
            continue
        flush()
        content = message.get("content") or ""
        calls = message.get("tool_calls") or ()
        if role == "assistant" and calls:
            blocks = [fmt.render_call(c) for c in calls]
            content = "\n".join([content.strip(), *blocks] if content.strip() else blocks)
        out.append({"role": role, "content": content})
    flush()
    if tools:
        offer = fmt.system_prompt(tools)
        if out and out[0]["role"] == "system":
            system = out[0]["content"].rstrip()
            out[0] = {"role": "system", "content": f"{system}\n\n{offer}" if system else offer}
        else:
            out.insert(0, {"role": "system", "content": offer})
    return out
