"""API overhead benchmark: ``node0 api`` vs the conversation engine called directly.

One local 3-stage SmolLM2 swarm (the ``--preset``), two ways to answer the same ``--clients``
concurrent chat requests (the first prompts of :data:`bench.concurrency.QUESTIONS`), greedy,
``--new-tokens`` at most each:

- **direct**: the Python client API in this process: a ``ConversationEngine`` on a
  ``SwarmClient``, ``--clients`` concurrent ``engine.stream(messages, settings)``, each
  iterated to its end (a fresh pipeline session each, as an HTTP request gets);
- **api**: ``node0 api`` (the real CLI, its own process) on the same swarm, and
  ``--clients`` concurrent streaming ``POST /v1/chat/completions`` from this process (httpx,
  server-sent events parsed line by line, ``stream_options.include_usage``).

Both sides generate the same tokens: the same messages, greedy, the same limit (the API has no
``ignore_eos``, so neither side ignores EOS; the answers are compared and ``same_answers`` says
whether they matched). Per batch: TTFT of each request (from the call / the request being sent
to its first text chunk / first content delta) and aggregate tokens/s (completion tokens of all
answers / wall time of the batch). The two sides alternate in ABBA order over ``--rounds``
(direct, api, api, direct, …), so a load that drifts during the run favours neither.

The last line is JSON: ``api_overhead_ttft_ms_p50`` (TTFT p50 of the api side minus that of
the direct side, all rounds pooled), ``throughput_ratio`` (api ÷ direct aggregate tokens/s,
means over rounds), the per-round figures, ``single`` (``--single`` requests one at a time per
side, ABBA, one token each: the TTFT added without contention, as the median of paired
differences) and the load average at start and end (``os.getloadavg()``).

    python -m bench.api [--clients 8] [--new-tokens 64] [--rounds 4] [--single 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from api.launch import api_process
from bench.concurrency import QUESTIONS, _ms, _percentile, _ratio

REPO = Path(__file__).resolve().parent.parent
SIDES = ("direct", "api")


@dataclass
class Answer:
    """One request of a batch: its text, completion tokens and time to first text."""

    text: str
    completion_tokens: int
    ttft: float


async def direct_one(engine, messages: list[dict], new_tokens: int) -> Answer:
    from inference.conversation import GenerationSettings

    settings = GenerationSettings.create(max_new_tokens=new_tokens, temperature=0)
    started = time.perf_counter()
    first = None
    parts = []
    stream = engine.stream(messages, settings)
    async for chunk in stream:
        if first is None and chunk:
            first = time.perf_counter()
        parts.append(chunk)
    return Answer("".join(parts), stream.result.completion_tokens, first - started)


async def api_one(http, base: str, model: str, messages: list[dict], new_tokens: int) -> Answer:
    body = {
        "model": model,
        "messages": messages,
        "temperature": 0,
        "max_completion_tokens": new_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = None
    parts = []
    usage = None
    async with http.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {(await response.aread()).decode()}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"error event: {event['error']}")
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices", []):
                text = choice["delta"].get("content")
                if text:
                    if first is None:
                        first = time.perf_counter()
                    parts.append(text)
    return Answer("".join(parts), usage["completion_tokens"], first - started)


def batch(side: str, engine, base: str, model: str, conversations, new_tokens: int) -> dict:
    """All ``conversations`` at once on one side: answers, TTFTs, aggregate tokens/s."""
    import httpx

    async def run():
        started = time.perf_counter()
        if side == "direct":
            answers = await asyncio.gather(
                *(direct_one(engine, m, new_tokens) for m in conversations)
            )
        else:
            limits = httpx.Limits(max_connections=len(conversations) + 2)
            async with httpx.AsyncClient(timeout=600, limits=limits) as http:
                answers = await asyncio.gather(
                    *(api_one(http, base, model, m, new_tokens) for m in conversations)
                )
        return answers, time.perf_counter() - started

    answers, wall = asyncio.run(run())
    tokens = sum(a.completion_tokens for a in answers)
    ttfts = [a.ttft for a in answers]
    return {
        "answers": answers,
        "tokens": tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 2),
        "ttft_s": ttfts,
        "ttft_p50_ms": _ms(statistics.median(ttfts)),
    }


def single_pairs(engine, base: str, model: str, messages: list[dict], pairs: int) -> dict:
    """One request at a time, ``pairs`` times per side in ABBA order, one token each: the
    TTFT without concurrent requests, where the API's added time is not lost in the noise of
    eight prefills contending. Returns both sides' TTFTs and the median paired difference."""
    import httpx

    async def run():
        ttft: dict[str, list[float]] = {side: [] for side in SIDES}
        async with httpx.AsyncClient(timeout=600) as http:
            for i in range(pairs):
                for side in SIDES if i % 2 == 0 else SIDES[::-1]:
                    if side == "direct":
                        answer = await direct_one(engine, messages, 1)
                    else:
                        answer = await api_one(http, base, model, messages, 1)
                    ttft[side].append(answer.ttft)
        return ttft

    ttft = asyncio.run(run())
    added = [a - d for a, d in zip(ttft["api"], ttft["direct"], strict=True)]
    return {
        "pairs": pairs,
        "ttft_ms_p50": {side: _ms(statistics.median(ttft[side])) for side in SIDES},
        "added_ttft_ms_p50": _ms(statistics.median(added)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent requests per batch")
    parser.add_argument("--new-tokens", type=int, default=64, help="answer limit (greedy)")
    parser.add_argument(
        "--rounds", type=int, default=4, help="batches per side, in ABBA order (direct first)"
    )
    parser.add_argument(
        "--single",
        type=int,
        default=16,
        help="one-at-a-time requests per side for the uncontended TTFT (0: skip)",
    )
    parser.add_argument("--preset", default="smollm2-3stage", help="local swarm preset")
    parser.add_argument(
        "--stage-threads",
        type=int,
        default=None,
        help="torch threads per stage daemon (default: the preset's)",
    )
    args = parser.parse_args()
    if args.clients < 1 or args.new_tokens < 1 or args.rounds < 1:
        parser.error("--clients, --new-tokens and --rounds must be at least 1")
    load_average = [round(x, 2) for x in os.getloadavg()]

    from base.config_loader import load_yaml_config
    from inference.conversation import ConversationEngine
    from inference.swarm_client import SwarmClient
    from node.config import SwarmPreset, resolve_preset_path
    from node.local_swarm import start_swarm, stop_swarm

    preset, _ = load_yaml_config(resolve_preset_path(args.preset), SwarmPreset)
    daemon = dict(preset.daemon)
    if args.stage_threads:
        daemon["torch_threads"] = args.stage_threads
    # a batch's sessions, plus the previous batch's being closed as the next opens
    daemon["max_sessions"] = max(daemon.get("max_sessions", 16), 2 * args.clients + 1)
    preset = preset.model_copy(update={"daemon": daemon})
    conversations = [
        [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(args.clients)
    ]
    work = Path(tempfile.mkdtemp(prefix="node0-bench-"))
    state_file = work / "swarm.json"
    state = start_swarm(preset, args.preset, runs_dir=work / "runs", state_file=state_file)
    client = SwarmClient(preset.model, state.initial_peers)
    rounds: dict[str, list[dict]] = {side: [] for side in SIDES}
    try:
        engine = ConversationEngine.connect(client)
        with api_process(
            state.initial_peers,
            "--max-concurrent",
            str(args.clients),
            log=work / "api.log",
            cwd=REPO,
        ) as base:
            for side in SIDES:  # warm-up: both paths, not measured
                batch(side, engine, base, preset.model, conversations[:2], 8)
            for r in range(args.rounds):
                for side in SIDES if r % 2 == 0 else SIDES[::-1]:
                    figures = batch(
                        side, engine, base, preset.model, conversations, args.new_tokens
                    )
                    rounds[side].append(figures)
                    print(
                        f"round {r} {side:>6}: {figures['tokens']} tokens in "
                        f"{figures['wall_s']} s, {figures['tokens_per_s']} tok/s, TTFT p50 "
                        f"{figures['ttft_p50_ms']} ms",
                        flush=True,
                    )
            single = None
            if args.single:
                single = single_pairs(engine, base, preset.model, conversations[0], args.single)
                print(
                    f"one at a time ({args.single} pairs): TTFT p50 api "
                    f"{single['ttft_ms_p50']['api']} vs direct {single['ttft_ms_p50']['direct']}"
                    f" ms, added (paired median) {single['added_ttft_ms_p50']} ms",
                    flush=True,
                )
    finally:
        client.close()
        stop_swarm(state_file)

    def pooled(side: str) -> list[float]:
        return [t for figures in rounds[side] for t in figures["ttft_s"]]

    def mean_rate(side: str) -> float:
        return round(statistics.mean(f["tokens_per_s"] for f in rounds[side]), 2)

    texts = {side: [[a.text for a in f["answers"]] for f in rounds[side]] for side in SIDES}
    same = all(t == texts["direct"][0] for side in SIDES for t in texts[side])
    direct_p50, api_p50 = _percentile(pooled("direct"), 50), _percentile(pooled("api"), 50)
    result = {
        "clients": args.clients,
        "new_tokens": args.new_tokens,
        "rounds": args.rounds,
        "stages": len(preset.peers),
        "stage_threads": preset.daemon.get("torch_threads", "default"),
        "load_average": load_average,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "same_answers": same,
        "tokens_per_batch": {side: [f["tokens"] for f in rounds[side]] for side in SIDES},
        "api_overhead_ttft_ms_p50": _ms(api_p50 - direct_p50),
        "throughput_ratio": _ratio(mean_rate("api"), mean_rate("direct")),
        "ttft_ms_p50": {"direct": _ms(direct_p50), "api": _ms(api_p50)},
        "ttft_ms_p95": {side: _ms(_percentile(pooled(side), 95)) for side in SIDES},
        "tokens_per_s": {side: mean_rate(side) for side in SIDES},
        "single": single,
        "per_round": {
            side: [
                {k: f[k] for k in ("tokens_per_s", "ttft_p50_ms", "wall_s")} for f in rounds[side]
            ]
            for side in SIDES
        },
    }
    print(
        f"api / direct: throughput {result['throughput_ratio']} ({mean_rate('api')} vs "
        f"{mean_rate('direct')} tok/s), TTFT p50 {result['ttft_ms_p50']['api']} vs "
        f"{result['ttft_ms_p50']['direct']} ms: added {result['api_overhead_ttft_ms_p50']} ms; "
        f"same answers: {same}",
        flush=True,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
