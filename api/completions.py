"""``POST /v1/completions``: OpenAI's (legacy) text completions, raw prompts for base models.

The prompt is tokenized as it is, without a chat template (a string, a list holding one string,
or token ids), and continued in a fresh pipeline session on the conversation engine
(``prepare_prompt`` / ``complete_prepared``), the same generation as chat. One prompt per
request: batches (several prompts), ``n`` > 1 and ``best_of`` > 1 are refused, as are
``logprobs`` and ``suffix``, which would change the answer; ``echo`` puts the prompt in front of
the text.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from api.errors import APIError, bad_parameter, from_node0
from api.extensions import EXTENSION_FIELDS
from api.protocol import (
    _number,
    check_fields,
    generation_settings,
    sampling_fields,
    stream_settings,
)
from api.serving import FINISH_REASONS, Serving, usage
from api.streaming import PumpedStream, SSEResponse, sse
from base.errors import Node0Error, RequestError

DEFAULT_MAX_TOKENS = 16
"""OpenAI's default answer length for completions."""

COMPLETION_FIELDS = (
    frozenset(
        {
            "model",
            "prompt",
            "max_tokens",
            "temperature",
            "top_p",
            "top_k",
            "seed",
            "stop",
            "stream",
            "n",
            "echo",
            "logprobs",
            "suffix",
            "best_of",
        }
    )
    | EXTENSION_FIELDS
)


@dataclass(frozen=True)
class CompletionRequest:
    """A checked completions request.

    Attributes:
        prompt: the text, or token ids.
        max_tokens: the answer's length limit (OpenAI's default 16).
    """

    model: str
    prompt: str | list[int]
    stream: bool
    include_usage: bool
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    stop: tuple[str, ...]
    echo: bool


def _prompt(body: dict) -> str | list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str) and prompt:
        return prompt
    if isinstance(prompt, list) and prompt:
        if all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in prompt):
            return list(prompt)
        if all(isinstance(p, str | list) for p in prompt):
            raise bad_parameter(
                "prompt",
                f"one prompt per request: got a batch of {len(prompt)} (send them one by one)",
                "unsupported_value",
            )
    raise bad_parameter(
        "prompt",
        "'prompt' must be a non-empty string, a list holding one, or a list of token ids (>= 0)",
    )


def _refuse_unless(body: dict, name: str, *no_ops: Any) -> None:
    value = body.get(name)
    if value is None or any(value == v and type(value) is type(v) for v in no_ops):
        return
    raise bad_parameter(
        name, f"'{name}' is not supported by this server (got {value!r})", "unsupported_parameter"
    )


def parse_completion(body: Any) -> CompletionRequest:
    """A completions body checked into a :class:`CompletionRequest` (an :class:`APIError` on
    anything wrong, naming the parameter)."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    check_fields(body, COMPLETION_FIELDS)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_parameter("model", "'model' must be a model id (see GET /v1/models)")
    for name in ("n", "best_of"):
        count = _number(body, name, 1, low=1, high=None, integer=True)
        if count != 1:
            raise bad_parameter(
                name, f"only {name}=1 is supported, got {count}", "unsupported_value"
            )
    _refuse_unless(body, "logprobs")
    _refuse_unless(body, "suffix", "")
    echo = body.get("echo") or False
    if not isinstance(echo, bool):
        raise bad_parameter("echo", "'echo' must be a boolean", "invalid_type")
    stream, include_usage = stream_settings(body)
    return CompletionRequest(
        model=model,
        prompt=_prompt(body),
        stream=stream,
        include_usage=include_usage,
        max_tokens=_number(body, "max_tokens", DEFAULT_MAX_TOKENS, low=1, high=None, integer=True),
        **sampling_fields(body),
        echo=echo,
    )


def add_completions(app: FastAPI, serving: Serving) -> None:
    """Register ``POST /v1/completions`` on ``app``."""
    engine = serving.engine
    metrics = serving.metrics

    def settings_for(req: CompletionRequest, prompt_tokens: int):
        """The generation settings, refusing a prompt + max_tokens longer than the window."""
        room = engine.max_length - 1 - prompt_tokens  # the most tokens the answer can have
        if room < 1:
            raise APIError(
                400,
                f"this model's maximum context length is {engine.max_length} tokens; the "
                f"prompt takes {prompt_tokens} tokens",
                code="context_length_exceeded",
                param="prompt",
            )
        if req.max_tokens > room:
            raise APIError(
                400,
                f"this model's maximum context length is {engine.max_length} tokens; the "
                f"prompt takes {prompt_tokens} tokens and max_tokens asks for {req.max_tokens} "
                f"more (at most {room} fit)",
                code="context_length_exceeded",
                param="max_tokens",
            )
        return generation_settings(req, req.max_tokens)

    async def completions(request: Request) -> Response:
        started = request.state.received
        body = await serving.json_body(request)
        req = parse_completion(body)
        ext = serving.extensions.parse(body)
        if ext.scope is not None and not isinstance(req.prompt, str):
            raise bad_parameter("rag", "retrieved context needs a text prompt, not token ids")
        adapters = await serving.adapters_of(req.model, ext.adapters)
        try:
            prepared = await asyncio.to_thread(
                engine.prepare_prompt, req.prompt, scope=ext.scope, rag=ext.rag
            )
        except RequestError as exc:  # token ids outside the vocabulary
            raise bad_parameter("prompt", str(exc)) from exc
        settings = settings_for(req, len(prepared.prompt_ids))
        await serving.admit(request)
        prompt_text = (
            req.prompt if isinstance(req.prompt, str) else engine.tokenizer.decode(req.prompt)
        )
        echo = prompt_text if req.echo else ""
        completion_id = f"cmpl-{secrets.token_hex(12)}"
        created = int(time.time())

        async def record(result) -> None:
            metrics.observe_result(result)
            await ext.save_transcript([{"role": "user", "content": prompt_text}], result.text)

        def choice(text: str, finish: str | None) -> dict:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

        def answer(choices: list[dict], **extra) -> dict:
            return {
                "id": completion_id,
                "object": "text_completion",
                "created": created,
                "model": req.model,
                "choices": choices,
                **extra,
            }

        if not req.stream:
            result = await engine.complete_prepared(prepared, settings, adapters=adapters)
            metrics.ttft.observe(
                time.perf_counter() - started - result.elapsed + result.time_to_first_token
            )
            await record(result)
            finish = FINISH_REASONS[result.finish_reason]
            return JSONResponse(answer([choice(echo + result.text, finish)], usage=usage(result)))

        turn = await PumpedStream.start(
            engine.stream_prepared(prepared, settings, adapters=adapters)
        )
        metrics.ttft.observe(time.perf_counter() - started)
        nulls = {"usage": None} if req.include_usage else {}

        async def events() -> AsyncIterator[str]:
            if echo or turn.first:
                yield sse(answer([choice(echo + (turn.first or ""), None)], **nulls))
            while isinstance(item := await turn.next(), str):
                yield sse(answer([choice(item, None)], **nulls))
            if isinstance(item, Node0Error):
                yield sse(from_node0(item).body())
                yield sse("[DONE]")
                return
            await record(item)
            yield sse(answer([choice("", FINISH_REASONS[item.finish_reason])], **nulls))
            if req.include_usage:
                yield sse(answer([], usage=usage(item)))
            yield sse("[DONE]")

        return SSEResponse(events(), turn.close)

    serving.post(app, "/v1/completions", completions)
