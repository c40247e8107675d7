"""The request bodies ``node0 api`` takes, checked field by field into engine arguments.

Fields are OpenAI's. Each one is either used, accepted and ignored because it cannot change the
answer (:data:`IGNORED`), or refused with a 400 naming it: a field that would change the result
but is not implemented (:data:`UNSUPPORTED`, unless it has its no-op value), or a field OpenAI
does not know either (OpenAI answers unrecognized arguments with a 400 too).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from api.errors import APIError, bad_parameter
from api.extensions import EXTENSION_FIELDS
from base.errors import Node0Error, RequestError
from inference.tool_calls import ToolCall, ToolSpec

IGNORED = frozenset(
    {"store", "metadata", "user", "service_tier", "parallel_tool_calls", "stream_options"}
)
"""Accepted and ignored (``stream_options`` is read, then ignored beyond include_usage)."""

# field -> its no-op value: the request may carry the field only with that value
UNSUPPORTED: dict[str, Any] = {
    "functions": None,
    "function_call": None,
    "logprobs": False,
    "top_logprobs": None,
    "logit_bias": None,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "response_format": None,
    "prediction": None,
    "audio": None,
    "modalities": None,
    "reasoning_effort": None,
    "web_search_options": None,
}

CHAT_FIELDS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "stop",
        "n",
        "tools",
        "tool_choice",
    }
)

ROLE_ALIASES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}


@dataclass(frozen=True)
class ChatRequest:
    """A checked chat-completions request."""

    model: str
    messages: list[dict]
    stream: bool
    include_usage: bool
    max_tokens: int | None
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: tuple[str, ...]
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str = "none"
    """``none`` (no tools offered), ``auto``, ``required`` or ``function`` (the one named)."""
    tool_name: str | None = None


def _number(body: dict, name: str, default, *, low, high, integer=False, low_open=False):
    value = body.get(name)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an integer" if integer else "a number"
        raise bad_parameter(name, f"'{name}' must be {kind}, got {value!r}", "invalid_type")
    below = value <= low if low_open else value < low
    if below or (high is not None and value > high):
        bound = f"> {low}" if low_open else f">= {low}"
        rng = f"{bound} and <= {high}" if high is not None else bound
        raise bad_parameter(name, f"'{name}' must be {rng}, got {value!r}")
    return value


def _content(index: int, message: dict) -> str:
    content = message.get("content")
    if content is None and message.get("role") == "assistant":
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise bad_parameter(
                    f"messages[{index}].content",
                    f"content parts of type {kind!r} are not supported (text only)",
                    "unsupported_value",
                )
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise bad_parameter(
        f"messages[{index}].content", "content must be a string or a list of text parts"
    )


def _tool_calls(index: int, message: dict) -> list[ToolCall]:
    """An assistant message's ``tool_calls``, as the model is shown them again."""
    calls = message.get("tool_calls") or []
    where = f"messages[{index}].tool_calls"
    if message.get("role") != "assistant" and calls:
        raise bad_parameter(where, "only assistant messages carry tool_calls")
    if not isinstance(calls, list):
        raise bad_parameter(where, "'tool_calls' must be a list")
    out = []
    for k, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad_parameter(f"{where}[{k}]", "a tool call needs function.name")
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, str):
            raise bad_parameter(
                f"{where}[{k}].function.arguments", "arguments must be a JSON string"
            )
        out.append(ToolCall(str(call.get("id") or ""), function["name"], arguments))
    return out


def _messages(body: dict) -> list[dict]:
    """The messages, roles normalised; assistant ``tool_calls`` as :class:`ToolCall`, ``tool``
    messages with their ``tool_call_id``."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_parameter("messages", "'messages' must be a non-empty list")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_parameter(f"messages[{i}]", "each message must be an object")
        role = message.get("role")
        if role not in ROLE_ALIASES:
            raise bad_parameter(
                f"messages[{i}].role",
                f"unknown role {role!r}; use one of {sorted(ROLE_ALIASES)}",
            )
        entry: dict = {"role": ROLE_ALIASES[role], "content": _content(i, message)}
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise bad_parameter(
                    f"messages[{i}].tool_call_id", "a tool message needs its 'tool_call_id'"
                )
            entry["tool_call_id"] = call_id
        calls = _tool_calls(i, message)
        if calls:
            entry["tool_calls"] = calls
        out.append(entry)
    return out


def _tools(body: dict) -> tuple[ToolSpec, ...]:
    tools = body.get("tools")
    if tools is None:
        return ()
    if not isinstance(tools, list):
        raise bad_parameter("tools", "'tools' must be a list of tool objects")
    out: list[ToolSpec] = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise bad_parameter(
                where, "only tools of type 'function' are supported", "unsupported_value"
            )
        function = tool.get("function")
        if not isinstance(function, dict):
            raise bad_parameter(f"{where}.function", "a tool needs a 'function' object")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        description = function.get("description") or ""
        if not isinstance(parameters, dict):
            raise bad_parameter(f"{where}.function.parameters", "must be a JSON schema object")
        if not isinstance(description, str):
            raise bad_parameter(f"{where}.function.description", "must be a string")
        try:
            spec = ToolSpec(function.get("name"), description, parameters)
        except RequestError as exc:
            raise bad_parameter(f"{where}.function.name", str(exc)) from exc
        if any(t.name == spec.name for t in out):
            raise bad_parameter(f"{where}.function.name", f"two tools are named {spec.name!r}")
        out.append(spec)
    return tuple(out)


def _tool_choice(body: dict, tools: tuple[ToolSpec, ...]) -> tuple[str, str | None]:
    """``(choice, name)``: OpenAI's default is ``auto`` with tools and ``none`` without."""
    choice = body.get("tool_choice")
    if choice is None:
        return ("auto" if tools else "none"), None
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise bad_parameter(
                "tool_choice", "'tool_choice' must be none, auto, required or a named function"
            )
        if choice != "none" and not tools:
            raise bad_parameter("tool_choice", f"tool_choice '{choice}' needs 'tools'")
        return choice, None
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise bad_parameter(
            "tool_choice",
            'a named tool_choice is {"type": "function", "function": {"name": …}}',
        )
    if name not in {t.name for t in tools}:
        raise bad_parameter(
            "tool_choice", f"tool_choice names {name!r}, which is not among 'tools'"
        )
    return "function", name


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise bad_parameter("stop", "'stop' must be a non-empty string or a list of them")
    if len(stop) > 4:
        raise bad_parameter("stop", f"at most 4 stop sequences, got {len(stop)}")
    return tuple(stop)


def stream_settings(body: dict) -> tuple[bool, bool]:
    """``(stream, include_usage)`` of a request (chat or completions)."""
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise bad_parameter("stream", "'stream' must be a boolean", "invalid_type")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_parameter("stream_options", "'stream_options' must be an object")
    if options and not stream:
        raise bad_parameter("stream_options", "'stream_options' needs 'stream': true")
    return stream, bool(options.get("include_usage"))


def sampling_fields(body: dict) -> dict[str, Any]:
    """``temperature``, ``top_p``, ``top_k`` (vLLM's extra), ``seed`` and ``stop`` of a chat or
    completions request, checked (OpenAI's defaults; without a seed a random one is drawn)."""
    seed = _number(body, "seed", None, low=-(2**63), high=2**64 - 1, integer=True)
    return {
        "temperature": float(_number(body, "temperature", 1.0, low=0, high=2)),
        "top_p": float(_number(body, "top_p", 1.0, low=0, high=1, low_open=True)),
        "top_k": max(0, int(_number(body, "top_k", 0, low=-1, high=None, integer=True))),
        "seed": secrets.randbelow(2**31) if seed is None else seed % 2**64,
        "stop": _stop(body),
    }


def generation_settings(req, max_new_tokens: int, extra_stop: tuple[str, ...] = ()):
    """The engine's :class:`~inference.conversation.GenerationSettings` for a checked request
    (a chat or completions one: both carry :func:`sampling_fields`)."""
    from inference.conversation import GenerationSettings

    try:
        return GenerationSettings.create(
            max_new_tokens=max_new_tokens,
            temperature=req.temperature,
            top_k=req.top_k,
            top_p=req.top_p,
            seed=req.seed,
            stop=req.stop + extra_stop,
        )
    except Node0Error as exc:
        raise bad_parameter("temperature", str(exc)) from exc


def check_fields(body: dict, known: frozenset[str]) -> None:
    """Refuse fields that would change the answer but are not implemented, and unknown ones."""
    for name, value in body.items():
        if name in known or name in IGNORED:
            continue
        if name in UNSUPPORTED:
            if value is None or value == UNSUPPORTED[name] or value == []:
                continue
            raise bad_parameter(
                name, f"'{name}' is not supported by this server yet", "unsupported_parameter"
            )
        raise bad_parameter(name, f"unrecognized request argument: '{name}'", "unknown_parameter")


def parse_chat(body: Any) -> ChatRequest:
    """A chat-completions body checked into a :class:`ChatRequest` (an :class:`APIError` on
    anything wrong, naming the parameter)."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    check_fields(body, CHAT_FIELDS | EXTENSION_FIELDS)  # extensions: read by api.extensions
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_parameter("model", "'model' must be a model id (see GET /v1/models)")
    n = _number(body, "n", 1, low=1, high=None, integer=True)
    if n != 1:
        raise bad_parameter("n", f"only n=1 is supported, got n={n}", "unsupported_value")
    stream, include_usage = stream_settings(body)
    max_tokens = body.get("max_completion_tokens")
    name = "max_completion_tokens"
    if max_tokens is None:
        name = "max_tokens"
    max_tokens = _number(body, name, None, low=1, high=None, integer=True)
    tools = _tools(body)
    tool_choice, tool_name = _tool_choice(body, tools)
    return ChatRequest(
        model=model,
        messages=_messages(body),
        stream=stream,
        include_usage=include_usage,
        max_tokens=max_tokens,
        **sampling_fields(body),
        tools=tools,
        tool_choice=tool_choice,
        tool_name=tool_name,
    )
