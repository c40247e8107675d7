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

IGNORED = frozenset(
    {"store", "metadata", "user", "service_tier", "parallel_tool_calls", "stream_options"}
)
"""Accepted and ignored (``stream_options`` is read, then ignored beyond include_usage)."""

# field -> its no-op value: the request may carry the field only with that value
UNSUPPORTED: dict[str, Any] = {
    "tools": None,
    "tool_choice": None,
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
    }
)

ROLE_ALIASES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass(frozen=True)
class ChatRequest:
    """A checked chat-completions request."""

    model: str
    messages: list[dict[str, str]]
    stream: bool
    include_usage: bool
    max_tokens: int | None
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: tuple[str, ...]


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


def _messages(body: dict) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_parameter("messages", "'messages' must be a non-empty list")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_parameter(f"messages[{i}]", "each message must be an object")
        role = message.get("role")
        if role == "tool" or message.get("tool_calls"):
            raise bad_parameter(
                f"messages[{i}].role",
                "tool messages and tool calls are not supported by this server yet",
                "unsupported_value",
            )
        if role not in ROLE_ALIASES:
            raise bad_parameter(
                f"messages[{i}].role",
                f"unknown role {role!r}; use one of {sorted(ROLE_ALIASES)}",
            )
        out.append({"role": ROLE_ALIASES[role], "content": _content(i, message)})
    return out


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
    check_fields(body, CHAT_FIELDS)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_parameter("model", "'model' must be a model id (see GET /v1/models)")
    n = _number(body, "n", 1, low=1, high=None, integer=True)
    if n != 1:
        raise bad_parameter("n", f"only n=1 is supported, got n={n}", "unsupported_value")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise bad_parameter("stream", "'stream' must be a boolean", "invalid_type")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_parameter("stream_options", "'stream_options' must be an object")
    if options and not stream:
        raise bad_parameter("stream_options", "'stream_options' needs 'stream': true")
    max_tokens = body.get("max_completion_tokens")
    name = "max_completion_tokens"
    if max_tokens is None:
        name = "max_tokens"
    max_tokens = _number(body, name, None, low=1, high=None, integer=True)
    seed = _number(body, "seed", None, low=-(2**63), high=2**64 - 1, integer=True)
    return ChatRequest(
        model=model,
        messages=_messages(body),
        stream=stream,
        include_usage=bool(options.get("include_usage")),
        max_tokens=max_tokens,
        temperature=float(_number(body, "temperature", 1.0, low=0, high=2)),
        top_p=float(_number(body, "top_p", 1.0, low=0, high=1, low_open=True)),
        top_k=max(0, int(_number(body, "top_k", 0, low=-1, high=None, integer=True))),
        seed=(secrets.randbelow(2**31) if seed is None else seed % 2**64),
        stop=_stop(body),
    )
