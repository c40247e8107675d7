"""A chat request's tools as the engine sees them, and the model's reply as OpenAI's
``message`` / ``delta`` with ``tool_calls``.

The syntax is the model family's (``engine.tool_format``, see :mod:`inference.tool_calls`):

- ``tool_choice: none``: no tools are offered and the reply is plain text (past calls and
  results in the history are still shown to the model).
- ``auto``: the tools are offered in the system message; the reply is parsed for calls.
- ``required`` / a named function: the same, and the reply is made to start as a call (the
  call's opening, with the function's name when one is named, is put in the prompt), ending at
  the call's closing tag. The model still writes the arguments; if they do not parse, the
  answer is the raw text with ``finish_reason`` ``stop`` or ``length``, as for ``auto``.
"""

from __future__ import annotations

from dataclasses import dataclass

from api.protocol import ChatRequest
from inference.tool_calls import ParsedReply, ReplyEvent, ReplyStream, ToolCall, ToolCallFormat
from inference.tool_calls import with_tools as render_tools


@dataclass(frozen=True)
class ToolTurn:
    """What the engine is asked for one chat request.

    Attributes:
        messages: plain system/user/assistant messages (tools offered, calls rendered).
        prefix: the start of the reply, put in the prompt (empty unless a call is forced).
        stop: stop sequences added to the request's (the call's closing tag when forced).
        parse: whether the reply is parsed for calls.
    """

    messages: list[dict[str, str]]
    prefix: str
    stop: tuple[str, ...]
    parse: bool
    fmt: ToolCallFormat
    names: frozenset[str]

    @classmethod
    def of(cls, req: ChatRequest, fmt: ToolCallFormat) -> ToolTurn:
        offered = req.tools if req.tool_choice != "none" else ()
        forced = req.tool_choice in ("required", "function")
        return cls(
            messages=render_tools(req.messages, fmt, offered),
            prefix=fmt.forced_prefix(req.tool_name) if forced else "",
            stop=(fmt.close_tag,) if forced else (),
            parse=bool(offered),
            fmt=fmt,
            names=frozenset(t.name for t in offered),
        )

    def reply(self, text: str) -> ParsedReply:
        """The whole reply (``text`` as generated, after the prefix) split into content and
        calls; the raw text when the reply is not parsed."""
        if not self.parse:
            return ParsedReply(text)
        return self.fmt.parse(self.prefix + text, self.names)

    def reply_stream(self) -> ReplyStream | None:
        """A parser for the streamed reply, already fed the prefix (None: not parsed)."""
        if not self.parse:
            return None
        parser = self.fmt.stream(self.names)
        parser.feed(self.prefix)  # an open call: nothing is released yet
        return parser


def call_json(call: ToolCall, index: int | None = None) -> dict:
    """A call as OpenAI's ``tool_calls`` entry (with ``index`` in a stream delta)."""
    entry = {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }
    return entry if index is None else {"index": index, **entry}


def message_json(reply: ParsedReply) -> dict:
    """The reply as OpenAI's assistant ``message``."""
    if not reply.tool_calls:
        return {"role": "assistant", "content": reply.content}
    return {
        "role": "assistant",
        "content": reply.content or None,
        "tool_calls": [call_json(c) for c in reply.tool_calls],
    }


class DeltaWriter:
    """Turns a streamed reply's text into OpenAI ``delta`` objects, counting calls."""

    def __init__(self, turn: ToolTurn) -> None:
        self._parser = turn.reply_stream()
        self.calls = 0

    def feed(self, text: str) -> list[dict]:
        if self._parser is None:
            return [{"content": text}] if text else []
        return self._deltas(self._parser.feed(text))

    def finish(self) -> list[dict]:
        return [] if self._parser is None else self._deltas(self._parser.finish())

    def _deltas(self, events: list[ReplyEvent]) -> list[dict]:
        out = []
        for event in events:
            if event.call is not None:
                out.append({"tool_calls": [call_json(event.call, self.calls)]})
                self.calls += 1
            elif event.text:
                out.append({"content": event.text})
        return out
