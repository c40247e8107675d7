"""Helpers for integration tests: in-process generation through a real swarm, references."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from base.sampler import SamplingParams
from inference.generation import GenerationResult
from inference.swarm_client import SwarmClient

REPO = Path(__file__).resolve().parents[2]
GREEDY = SamplingParams()


def swarm_generate(
    client: SwarmClient,
    prompts_ids: list[list[int]],
    *,
    max_new_tokens: int,
    sampling: SamplingParams = GREEDY,
    first_logits: bool = False,
    on_token=None,
    max_length: int | None = None,
) -> list[GenerationResult]:
    """Generate for each prompt in a fresh pipeline session (greedy by default, no EOS stop)."""
    tokenizer = client.load_tokenizer()

    async def run() -> list[GenerationResult]:
        return [
            await client.generate_once(
                tokenizer,
                ids,
                max_new_tokens=max_new_tokens,
                sampling=sampling,
                max_length=max_length,
                return_first_logits=first_logits,
                on_session_token=on_token,
                step_timeout=20.0,
            )
            for ids in prompts_ids
        ]

    return asyncio.run(run())


@torch.inference_mode()
def reference_generate(model, prompts_ids: list[list[int]], max_new_tokens: int):
    """transformers generate(do_sample=False) in one process, EOS disabled; + first logits."""
    out = []
    for ids in prompts_ids:
        x = torch.tensor([ids])
        tokens = model.generate(
            x,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
        logits = model(x).logits[0, -1]
        out.append((tokens[0, len(ids) :].tolist(), logits))
    return out


def run_cli(args: list[str], *, stdin: str = "", timeout: float = 120, env=None):
    return subprocess.run(
        [sys.executable, "-m", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def kill_group(pid: int) -> None:
    """Crash a daemon the way a dead machine would: SIGKILL its whole process group."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
