"""Concurrency benchmark (issue 11): N sessions at once through the 3-stage swarm vs batched
single-process ``generate``.

For each N in ``--sizes`` the first N chat prompts of :data:`QUESTIONS` (cycled past 16; short
and long ones) are answered at once, ``--new-tokens`` greedy tokens each (EOS ignored), by N
concurrent ``ConversationEngine.complete`` calls in this one client process
(``asyncio.gather``): a fresh pipeline session each, as N HTTP requests get. Per batch:

- aggregate tokens/s: new tokens of all N answers / wall time of the batch (the N calls start
  together; the batch ends with the last answer);
- inter-token latency (ITL) p50/p95: the gaps between consecutive tokens of a session, all N
  sessions pooled. A token's time is when its pipeline step returns to the client (each
  session's ``step`` is wrapped; the engine has no per-token callback, ``on_text`` only fires
  for text that is final);
- TTFT: from the call to the session's first token, median and worst of the N (it includes
  tokenizing the prompt and opening the session, which concurrent requests contend for).

Reference: the same N prompt token ids through single-process transformers ``generate`` as one
batch (left padding and attention mask, KV-cache, greedy, exactly ``--new-tokens`` new tokens,
EOS ignored), the faster of 1 and 2 torch threads; its ITL is the gap between decoding steps.
Swarm and reference run back to back for each N, so background load hits both alike.

Prefill interference: 7 sessions decode; once each has ``--trigger-tokens`` tokens an 8th
session sends a RAG-like prompt of about ``--prefill-tokens`` tokens (one new token). ITL p95
of the 7 over the window from the 8th's call to its first token (every gap that overlaps it),
against the same 7 sessions, same trigger, same window length, without the 8th.

The benchmark talks to the daemons only through the conversation engine, so it runs unchanged
against a daemon that computes one session's step at a time and against one that batches them.
Daemon environment variables (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``, ``MALLOC_*``) are
inherited from this process and echoed in the result. A line per N, then the prefill line; the
last line is JSON::

    python -m bench.concurrency [--sizes 1,2,4,8,16] [--new-tokens 128] [--stage-threads N]
                                [--dtype float32|bfloat16]
    python -m bench.concurrency --quick      # smoke run: sizes 1,2,8, 16 tokens
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

QUESTIONS = [
    "What is a DHT?",
    "Write a haiku about autumn rain.",
    "Explain how a bead moves from open to closed in a Gas Town rig.",
    "Write a short Python function that reverses a linked list, and explain its complexity.",
    "What are the benefits of code review?",
    "Describe the water cycle for a ten-year-old.",
    "Summarize the rules of chess in a paragraph.",
    "My unit tests pass locally but fail in CI with a timeout after exactly ten minutes. The "
    "job runs on a shared runner and starts a database container first. What should I check, "
    "in order?",
    "Translate 'good morning, how are you?' into French and Spanish.",
    "I have a CSV file with columns date, store and revenue. How would I find, for each store, "
    "the month with the highest total revenue using pandas? Show the code.",
    "Why is the sky blue?",
    "Compare TCP and UDP. When would you pick each one for a multiplayer game?",
    "A farmer has 17 sheep and all but 9 run away. How many are left? Explain the trick.",
    "We are splitting a language model across three machines so each holds a third of the "
    "layers. Activations travel between them over the network for every token. Which costs "
    "dominate the latency of one token, and how could batching several users help?",
    "Give me three names for a coffee shop run by robots.",
    "What does the Python GIL do, and why does it matter for CPU-bound threads?",
]

# the long prompt of the prefill-interference run: retrieved passages in front of a question,
# the shape of what the RAG context block puts before a user message
PASSAGES = [
    "The scheduler keeps one queue per priority class. A task enters the queue of its class "
    "when it becomes runnable and leaves it when it is picked, blocked on I/O, or cancelled. "
    "Picking takes the oldest task of the highest non-empty class, except that a class starved "
    "for more than two seconds is served next regardless of priority.",
    "Replicas exchange a heartbeat every five seconds. A replica that misses three heartbeats in "
    "a row is marked suspect; a suspect replica that answers a direct probe is restored, "
    "otherwise it is removed from the membership list and its shards are reassigned to the two "
    "least-loaded survivors.",
    "Backups run nightly at 02:00 UTC. Each backup is a full snapshot on Sundays and an "
    "incremental one on other days. Snapshots are kept for 35 days, incrementals for 14. A "
    "restore replays the last full snapshot and every incremental after it in order.",
    "The ingestion service accepts JSON documents up to 4 MiB. Larger documents are rejected "
    "with status 413 and a hint to use the chunked upload endpoint, which takes parts of at "
    "most 1 MiB, checks each part's checksum, and assembles the document once the final part "
    "arrives.",
    "Access tokens expire after one hour and refresh tokens after thirty days. A refresh token "
    "can be used once; using it returns a new pair. Presenting an already used refresh token "
    "revokes the whole family of tokens issued from the same login, as a defence against theft.",
    "The cache is a write-through cache with a 10-minute TTL. Reads that miss go to the "
    "primary database and populate the cache. Writes update the database first and then "
    "invalidate the key, so a concurrent read may briefly see the old value until the next miss.",
    "Build artifacts are content-addressed: the key of an artifact is the SHA-256 of its "
    "inputs, the toolchain version and the build flags. Two builds with the same key are "
    "assumed identical, so a cache hit skips the build step entirely and downloads the artifact.",
    "Alerts page the on-call engineer only when an error budget burns faster than fourteen "
    "times its sustainable rate over an hour, or six times over six hours. Slower burns open a "
    "ticket instead. Every page must link to a runbook entry that names the first three checks.",
]
LONG_QUESTION = (
    "Using only the context above, explain what happens, step by step, when a replica stops "
    "answering heartbeats while a restore is running, and which of the services described "
    "would notice first."
)
INTERFERENCE_DECODERS = 7

# the per-token timestamps of the session of the current task (see _TimedClient)
_STAMPS: contextvars.ContextVar[list[float]] = contextvars.ContextVar("stamps")


def _percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile ``q`` (0-100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    low = math.floor(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def long_prompt(count_tokens, target: int) -> str:
    """Numbered passages (cycled) until the text is about ``target`` tokens, then a question."""
    parts, n = [], 0
    while count_tokens("\n\n".join(parts) + LONG_QUESTION) < target - 20:
        passage = PASSAGES[n % len(PASSAGES)]
        parts.append(f"[{n + 1}] (source: docs/handbook/section-{n + 1}.md)\n{passage}")
        n += 1
    return "Context:\n\n" + "\n\n".join(parts) + "\n\nQuestion: " + LONG_QUESTION


def _timed_client_class():
    from inference.swarm_client import SwarmClient

    class _TimedClient(SwarmClient):
        """A swarm client whose sessions append the time each step returns (one step per
        generated token) to the list in :data:`_STAMPS` of the task that opened them."""

        def session(self, *args, **kwargs):
            session = super().session(*args, **kwargs)
            stamps, step = _STAMPS.get(None), session.step
            if stamps is None:  # not opened by _answer
                return session

            async def timed_step(*step_args, **step_kwargs):
                response = await step(*step_args, **step_kwargs)
                stamps.append(time.perf_counter())
                return response

            session.step = timed_step
            return session

    return _TimedClient


@dataclass
class Trace:
    """One session of a batch: when its call started, when each of its tokens arrived."""

    started: float
    stamps: list[float]

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]


async def _answer(engine, messages, new_tokens: int, stamps: list[float] | None = None) -> Trace:
    from inference.conversation import GenerationSettings

    stamps = [] if stamps is None else stamps
    _STAMPS.set(stamps)
    started = time.perf_counter()
    settings = GenerationSettings(max_new_tokens=new_tokens, ignore_eos=True)
    result = await engine.complete(messages, settings)
    assert len(result.token_ids) == new_tokens, (len(result.token_ids), new_tokens)
    return Trace(started, stamps)


def swarm_batch(engine, conversations, new_tokens: int) -> dict:
    """All ``conversations`` at once; aggregate tokens/s, pooled ITL, TTFT."""

    async def run():
        started = time.perf_counter()
        traces = await asyncio.gather(*(_answer(engine, m, new_tokens) for m in conversations))
        return traces, time.perf_counter() - started

    traces, wall = asyncio.run(run())
    gaps = [g for t in traces for g in t.gaps]
    ttft = [t.stamps[0] - t.started for t in traces]
    return {
        "tokens_per_s": round(len(conversations) * new_tokens / wall, 2),
        "itl_p50_ms": _ms(_percentile(gaps, 50)),
        "itl_p95_ms": _ms(_percentile(gaps, 95)),
        "ttft_p50_ms": _ms(statistics.median(ttft)),
        "ttft_max_ms": _ms(max(ttft)),
        "wall_s": round(wall, 2),
    }


def batched_reference(model, prompts: list[list[int]], new_tokens: int, pad_id: int) -> dict:
    """One left-padded batch through ``generate``, best of 1 and 2 torch threads."""
    best = None
    for threads in (1, 2):
        torch.set_num_threads(threads)
        figures = _batched_generate(model, prompts, new_tokens, pad_id)
        if best is None or figures["tokens_per_s"] > best["tokens_per_s"]:
            best = {**figures, "threads": threads}
    torch.set_num_threads(1)  # the swarm client's own tensor work is tiny
    return best


def _batched_generate(model, prompts: list[list[int]], new_tokens: int, pad_id: int) -> dict:
    from transformers import LogitsProcessor, LogitsProcessorList

    class StepClock(LogitsProcessor):
        """Called once per decoding step, after the forward pass: the step's time."""

        def __init__(self):
            self.stamps: list[float] = []

        def __call__(self, input_ids, scores):
            self.stamps.append(time.perf_counter())
            return scores

    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    clock = StepClock()
    with torch.inference_mode():
        started = time.perf_counter()
        out = model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=pad_id,
            use_cache=True,
            logits_processor=LogitsProcessorList([clock]),
        )
        wall = time.perf_counter() - started
    assert out.shape[1] - width == new_tokens, (out.shape, width, new_tokens)
    gaps = [b - a for a, b in zip(clock.stamps, clock.stamps[1:], strict=False)]
    return {
        "tokens_per_s": round(len(prompts) * new_tokens / wall, 2),
        "itl_p50_ms": _ms(_percentile(gaps, 50)),
        "itl_p95_ms": _ms(_percentile(gaps, 95)),
        "ttft_ms": _ms(clock.stamps[0] - started),
        "wall_s": round(wall, 2),
    }


async def _decoders_with(
    engine, decoders, new_tokens: int, trigger: int, long_messages, window: float | None
) -> tuple[list[float], float, float | None]:
    """Run the decoders; once each has ``trigger`` tokens either answer ``long_messages`` (one
    token) or, without it, wait ``window`` seconds. Returns the decoders' gaps that overlap the
    window, the window's length and the long prompt's TTFT."""
    stamps = [[] for _ in decoders]
    tasks = [
        asyncio.ensure_future(_answer(engine, m, new_tokens, s))
        for m, s in zip(decoders, stamps, strict=True)
    ]
    while min(len(s) for s in stamps) < trigger:
        if any(t.done() for t in tasks):  # a decoder failed or finished before the trigger
            break
        await asyncio.sleep(0.002)
    opened = time.perf_counter()
    prefill_ttft = None
    if long_messages is not None:
        trace = await _answer(engine, long_messages, 1)
        closed = trace.stamps[0]
        prefill_ttft = closed - trace.started
    else:
        await asyncio.sleep(window)
        closed = time.perf_counter()
    await asyncio.gather(*tasks)
    gaps = [
        b - a
        for s in stamps
        for a, b in zip(s, s[1:], strict=False)
        if b > opened and a < closed  # the gap overlaps the window
    ]
    return gaps, closed - opened, prefill_ttft


def prefill_interference(engine, decoders, long_messages, new_tokens: int, trigger: int) -> dict:
    with_gaps, window, prefill_ttft = asyncio.run(
        _decoders_with(engine, decoders, new_tokens, trigger, long_messages, None)
    )
    without_gaps, _, _ = asyncio.run(
        _decoders_with(engine, decoders, new_tokens, trigger, None, window)
    )
    with_p95, without_p95 = _percentile(with_gaps, 95), _percentile(without_gaps, 95)
    return {
        "decoders": len(decoders),
        "window_s": round(window, 2),
        "prefill_ttft_ms": _ms(prefill_ttft),
        "itl_p95_ms_with_prefill": _ms(with_p95),
        "itl_p95_ms_without": _ms(without_p95),
        "itl_p50_ms_with_prefill": _ms(_percentile(with_gaps, 50)),
        "itl_p50_ms_without": _ms(_percentile(without_gaps, 50)),
        "gaps_with_prefill": len(with_gaps),
        "gaps_without": len(without_gaps),
        "prefill_interference": _ratio(with_p95, without_p95),
    }


def _line(n: int, swarm: dict, ref: dict) -> str:
    return (
        f"N={n:2d}: swarm {swarm['tokens_per_s']:6.2f} tok/s, ITL p50 {swarm['itl_p50_ms']} / "
        f"p95 {swarm['itl_p95_ms']} ms, TTFT p50 {swarm['ttft_p50_ms']} / max "
        f"{swarm['ttft_max_ms']} ms | batched {ref['tokens_per_s']:6.2f} tok/s "
        f"({ref['threads']} threads), ITL p50 {ref['itl_p50_ms']} / p95 {ref['itl_p95_ms']} ms, "
        f"TTFT {ref['ttft_ms']} ms | swarm/batched "
        f"{_ratio(swarm['tokens_per_s'], ref['tokens_per_s'])}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", default="1,2,4,8,16", help="concurrent sessions per batch, comma-separated"
    )
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens per answer")
    parser.add_argument(
        "--stage-threads",
        type=int,
        default=None,
        help="torch threads per stage daemon (default: the preset's)",
    )
    parser.add_argument("--preset", default="smollm2-3stage", help="local swarm preset")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="stage dtype of the swarm and of the reference model",
    )
    parser.add_argument(
        "--prefill-tokens",
        type=int,
        default=1000,
        help="length of the prompt prefilled during the interference run",
    )
    parser.add_argument(
        "--trigger-tokens",
        type=int,
        default=16,
        help="tokens each decoder has before the long prompt is sent",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: sizes 1,2,8, 16 new tokens, trigger after 4 tokens",
    )
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.new_tokens, args.trigger_tokens = "1,2,8", 16, 4
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        parser.error("--sizes needs positive integers")
    if args.trigger_tokens >= args.new_tokens:
        parser.error("--trigger-tokens must be below --new-tokens")
    load_average = [round(x, 2) for x in os.getloadavg()]

    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from base.config_loader import load_yaml_config
    from inference.conversation import ConversationEngine
    from models.assets import prepare_model
    from node.config import SwarmPreset, resolve_preset_path
    from node.local_swarm import start_swarm, stop_swarm

    hf_logging.set_verbosity_error()  # generate's notes on the checkpoint's sampling defaults
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(
        prepare_model("smollm2-135m"), dtype=getattr(torch, args.dtype)
    ).eval()

    preset, _ = load_yaml_config(resolve_preset_path(args.preset), SwarmPreset)
    daemon = dict(preset.daemon, dtype=args.dtype)
    if args.stage_threads:
        daemon["torch_threads"] = args.stage_threads
    # every batch's sessions at once, plus one being closed as the next opens
    daemon["max_sessions"] = max(daemon.get("max_sessions", 16), max(sizes) + 1)
    preset = preset.model_copy(update={"daemon": daemon})
    work = Path(tempfile.mkdtemp(prefix="node0-bench-"))
    state_file = work / "swarm.json"
    state = start_swarm(preset, args.preset, runs_dir=work / "runs", state_file=state_file)
    client = _timed_client_class()(preset.model, state.initial_peers)
    per_n: dict[str, dict] = {}
    try:
        # a session reserves its whole window on every stage at open: ask for what a turn needs
        window = args.prefill_tokens + args.new_tokens + 256
        engine = ConversationEngine.connect(client, max_length=window)
        tokenizer = engine.tokenizer
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

        def conversations(n: int) -> list[list[dict]]:
            return [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(n)]

        def prompt_ids(convs) -> list[list[int]]:
            return [engine.prepare(m, max_new_tokens=args.new_tokens).prompt_ids for m in convs]

        swarm_batch(engine, conversations(2), 8)  # warm-up both paths
        batched_reference(model, prompt_ids(conversations(2)), 8, pad_id)
        for n in sizes:
            convs = conversations(n)
            swarm = swarm_batch(engine, convs, args.new_tokens)
            ref = batched_reference(model, prompt_ids(convs), args.new_tokens, pad_id)
            per_n[str(n)] = {"swarm": swarm, "batched": ref}
            print(_line(n, swarm, ref), flush=True)

        long_messages = [
            {"role": "user", "content": long_prompt(engine.count_tokens, args.prefill_tokens)}
        ]
        long_tokens = len(prompt_ids([long_messages])[0])
        prefill = prefill_interference(
            engine,
            conversations(INTERFERENCE_DECODERS),
            long_messages,
            args.new_tokens,
            args.trigger_tokens,
        )
        prefill["prompt_tokens"] = long_tokens
        print(
            f"prefill of {long_tokens} tokens beside {INTERFERENCE_DECODERS} decoders: "
            f"ITL p95 {prefill['itl_p95_ms_with_prefill']} ms vs "
            f"{prefill['itl_p95_ms_without']} ms without ({prefill['gaps_with_prefill']} / "
            f"{prefill['gaps_without']} gaps in a {prefill['window_s']} s window); "
            f"its TTFT {prefill['prefill_ttft_ms']} ms; ratio {prefill['prefill_interference']}",
            flush=True,
        )
    finally:
        client.close()
        stop_swarm(state_file)

    def swarm(n: int, key: str):
        return per_n.get(str(n), {}).get("swarm", {}).get(key)

    result = {
        "new_tokens": args.new_tokens,
        "sizes": sizes,
        "stages": len(preset.peers),
        "dtype": args.dtype,
        "stage_threads": preset.daemon.get("torch_threads", "default"),
        "load_average": load_average,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "env": {
            k: os.environ[k]
            for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")
            if k in os.environ
        }
        | {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "aggregate_speedup_8": _ratio(swarm(8, "tokens_per_s"), swarm(1, "tokens_per_s")),
        "vs_batched_reference_8": _ratio(
            swarm(8, "tokens_per_s"), per_n.get("8", {}).get("batched", {}).get("tokens_per_s")
        ),
        "itl_p95_ratio_8": _ratio(swarm(8, "itl_p95_ms"), swarm(1, "itl_p95_ms")),
        "prefill_interference": prefill["prefill_interference"],
        "prefill": prefill,
        "per_n": per_n,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
