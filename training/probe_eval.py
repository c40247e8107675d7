"""Answer the probe prompts through the swarm with the adapter being trained (greedy)."""

from __future__ import annotations

import asyncio

from dataload.probes import Probe, score_probes
from dataload.prompt_format import PromptMode, encode_prompt, render


def answer_probes(client, tokenizer, probes: list[Probe], *, adapters: tuple[str, ...],
                  mode: PromptMode, eos_id: int, max_new_tokens: int) -> list[str]:
    """Greedy answers (cut at the first EOS) of every probe, served by ``adapters``."""
    answers = []
    for probe in probes:
        text = render(probe.messages, mode=mode, tokenizer=tokenizer, add_generation_prompt=True)
        ids = encode_prompt(text, tokenizer, mode=mode)
        result = asyncio.run(client.generate_once(tokenizer, ids, max_new_tokens=max_new_tokens,
                                                  adapters=adapters))
        tokens = result.token_ids
        if eos_id in tokens:
            tokens = tokens[:tokens.index(eos_id)]
        answers.append(tokenizer.decode(tokens, skip_special_tokens=True))
    return answers


def probe_report(client, tokenizer, probes: list[Probe], **kwargs) -> dict:
    """:func:`score_probes` of the answers, with the answers themselves."""
    answers = answer_probes(client, tokenizer, probes, **kwargs)
    report = score_probes(probes, answers)
    report["answers"] = {p.id: a for p, a in zip(probes, answers, strict=True)}
    return report
