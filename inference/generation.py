"""The autoregressive loop across the pipeline.

Per step only the new token's ids enter the first stage; every stage extends its KV-cache; the
last stage samples with the canonical sampler. A conversation reuses the session: the next
prompt's tokens are compared with what is cached and only the new suffix is sent (rewinding the
caches where re-tokenization diverges).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from base.errors import RequestError
from base.sampler import SamplingParams
from inference.pipeline_session import PipelineSession
from inference.text_stream import TextStream
from proto.tensor_codec import decode


@dataclass
class GenerationResult:
    token_ids: list[int]
    text: str
    finish_reason: str  # "eos" | "stop" | "length" | "context"
    prompt_tokens: int
    reused_tokens: int  # prompt tokens already in the KV-cache
    time_to_first_token: float
    elapsed: float
    first_logits: object = field(default=None, repr=False)  # torch.Tensor on request
    token_times: list[float] = field(default_factory=list, repr=False)  # s from start, per token


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


async def generate(
    session: PipelineSession,
    tokenizer,
    prompt_ids: list[int],
    *,
    max_new_tokens: int,
    sampling: SamplingParams,
    stop: tuple[str, ...] = (),
    eos_token_ids: frozenset[int] = frozenset(),
    on_text: Callable[[str], None] | None = None,
    return_first_logits: bool = False,
) -> GenerationResult:
    """Generate a continuation of ``prompt_ids`` (the whole conversation so far)."""
    if max_new_tokens < 1:
        raise RequestError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not prompt_ids:
        raise RequestError("empty prompt")
    if len(prompt_ids) >= session.max_length:
        raise RequestError(
            f"prompt has {len(prompt_ids)} tokens; the context window is {session.max_length}",
            hint="shorten the prompt (or start a new conversation)",
        )
    started = time.perf_counter()
    reuse = min(common_prefix(session.token_ids, prompt_ids), len(prompt_ids) - 1)
    stream = TextStream(tokenizer, stop)
    generated: list[int] = []
    token_times: list[float] = []
    first_logits = None
    ttft = 0.0
    feed, position = prompt_ids[reuse:], reuse
    finish = "length"
    while True:
        response = await session.step(
            feed, position, sampling=sampling, return_logits=return_first_logits and not generated
        )
        if not generated:
            ttft = time.perf_counter() - started
            if return_first_logits:
                first_logits = decode(response.logits)
        token = int(response.token)
        position += len(feed)
        generated.append(token)
        token_times.append(time.perf_counter() - started)
        if token in eos_token_ids:
            finish = "eos"
            break
        chunk = stream.add(token)
        if chunk and on_text:
            on_text(chunk)
        if stream.stopped:
            finish = "stop"
            break
        if len(generated) >= max_new_tokens:
            break
        if position + 1 >= session.max_length:
            finish = "context"
            break
        feed = [token]
    tail = stream.finish()
    if tail and on_text:
        on_text(tail)
    return GenerationResult(
        token_ids=generated,
        text=stream.text,
        finish_reason=finish,
        prompt_tokens=len(prompt_ids),
        reused_tokens=reuse,
        time_to_first_token=ttft,
        elapsed=time.perf_counter() - started,
        first_logits=first_logits,
        token_times=token_times,
    )
