"""Answer the probe prompts through the swarm with the adapter being trained (greedy).

Several probes are in flight at once (one pipeline session each), so the stages work on
different probes at the same time instead of waiting for each other.
"""

from __future__ import annotations

import asyncio

from dataload.probes import Probe, score_probes
from dataload.prompt_format import PromptMode, encode_prompt, render

CONCURRENT_SESSIONS = 4


def answer_probes(
    client,
    tokenizer,
    probes: list[Probe],
    *,
    adapters: tuple[str, ...],
    mode: PromptMode,
    eos_id: int,
    max_new_tokens: int,
) -> list[str]:
    """Greedy answers (cut at the first EOS) of every probe, served by ``adapters``."""
    prompts = [
        encode_prompt(
            render(p.messages, mode=mode, tokenizer=tokenizer, add_generation_prompt=True),
            tokenizer,
            mode=mode,
        )
        for p in probes
    ]

    async def run_all() -> list[list[int]]:
        limit = asyncio.Semaphore(CONCURRENT_SESSIONS)

        async def one(ids: list[int]) -> list[int]:
            async with limit:
                result = await client.generate_once(
                    tokenizer, ids, max_new_tokens=max_new_tokens, adapters=adapters
                )
                return result.token_ids

        return await asyncio.gather(*(one(ids) for ids in prompts))

    answers = []
    for tokens in asyncio.run(run_all()):
        if eos_id in tokens:
            tokens = tokens[: tokens.index(eos_id)]
        answers.append(tokenizer.decode(tokens, skip_special_tokens=True))
    return answers


def probe_report(client, tokenizer, probes: list[Probe], **kwargs) -> dict:
    """:func:`score_probes` of the answers, with the answers themselves."""
    answers = answer_probes(client, tokenizer, probes, **kwargs)
    report = score_probes(probes, answers)
    report["answers"] = {p.id: a for p, a in zip(probes, answers, strict=True)}
    return report
