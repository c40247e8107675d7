"""Inference benchmark: 3-stage local swarm vs single-process transformers, same run.

Batch 1, greedy, ``--new-tokens`` new tokens per prompt (EOS ignored so every run has the same
length). Measures time-to-first-token and tokens/s (new tokens / wall time of the whole
generation, prompt included) for both, interleaved prompt by prompt so background noise hits
both alike. The swarm side is the conversation engine's stateless ``complete`` (a fresh session
per prompt, as an HTTP request gets; tokenization is not timed). The last line of output is
JSON with the ratio swarm/single.

    python -m bench.inference [--new-tokens 128] [--prompts 4] [--preset smollm2-3stage]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

QUESTIONS = [
    "Explain how a bead moves from open to closed in a Gas Town rig.",
    "Write a short Python function that reverses a linked list.",
    "What are the benefits of code review?",
    "Describe the water cycle for a ten-year-old.",
    "Summarize the rules of chess in a paragraph.",
    "How does a DHT find a key?",
]


def single_process(model, ids: list[int], new_tokens: int) -> tuple[float, float]:
    """Best of 1 and 2 torch threads: the reference gets its fastest setting on this machine."""
    best = None
    for threads in (1, 2):
        torch.set_num_threads(threads)
        ttft, rate = _single_process(model, ids, new_tokens)
        if best is None or rate > best[1]:
            best = (ttft, rate, threads)
    return best


def _single_process(model, ids: list[int], new_tokens: int) -> tuple[float, float]:
    x = torch.tensor([ids])
    with torch.inference_mode():
        started = time.perf_counter()
        model.generate(x, max_new_tokens=1, do_sample=False, pad_token_id=0)
        ttft = time.perf_counter() - started
        started = time.perf_counter()
        out = model.generate(
            x,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
        elapsed = time.perf_counter() - started
    assert out.shape[1] - len(ids) == new_tokens
    return ttft, new_tokens / elapsed


def swarm_once(engine, messages: list[dict], new_tokens: int) -> tuple[float, float]:
    """One answer through the conversation engine (a fresh session, as an HTTP request gets)."""
    from inference.conversation import GenerationSettings

    settings = GenerationSettings(max_new_tokens=new_tokens, ignore_eos=True)
    result = asyncio.run(engine.complete(messages, settings))
    assert len(result.token_ids) == new_tokens
    return result.time_to_first_token, new_tokens / result.elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--preset", default="smollm2-3stage")
    parser.add_argument(
        "--stage-threads",
        type=int,
        default=None,
        help="torch threads per stage daemon (default: the preset's)",
    )
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    from base.config_loader import load_yaml_config
    from inference.conversation import ConversationEngine
    from inference.swarm_client import SwarmClient
    from models.assets import prepare_model
    from node.config import SwarmPreset, resolve_preset_path
    from node.local_swarm import start_swarm, stop_swarm

    model_dir = prepare_model("smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS[: args.prompts]]

    preset, _ = load_yaml_config(resolve_preset_path(args.preset), SwarmPreset)
    if args.stage_threads:
        preset = preset.model_copy(
            update={"daemon": {**preset.daemon, "torch_threads": args.stage_threads}}
        )
    work = Path(tempfile.mkdtemp(prefix="node0-bench-"))
    state_file = work / "swarm.json"
    state = start_swarm(preset, args.preset, runs_dir=work / "runs", state_file=state_file)
    client = SwarmClient(preset.model, state.initial_peers)
    try:
        engine = ConversationEngine.connect(client)  # the catalog's prompt format (chat)
        prompts = [
            engine.prepare(m, max_new_tokens=args.new_tokens).prompt_ids for m in conversations
        ]
        swarm_once(engine, conversations[0], 8)  # warm-up both paths
        single_process(model, prompts[0], 8)
        swarm, single = [], []
        for messages, ids in zip(conversations, prompts, strict=True):
            single.append(single_process(model, ids, args.new_tokens))
            swarm.append(swarm_once(engine, messages, args.new_tokens))
            print(
                f"prompt {len(ids):3d} tokens: swarm ttft {swarm[-1][0] * 1000:6.1f} ms "
                f"{swarm[-1][1]:5.2f} tok/s | single ttft {single[-1][0] * 1000:6.1f} ms "
                f"{single[-1][1]:5.2f} tok/s ({single[-1][2]} threads)",
                flush=True,
            )
    finally:
        client.close()
        stop_swarm(state_file)

    def median(rows, i):
        return statistics.median(r[i] for r in rows)

    result = {
        "new_tokens": args.new_tokens,
        "prompts": len(prompts),
        "stages": len(preset.peers),
        "stage_threads": preset.daemon.get("torch_threads", "default"),
        "single_threads": [r[2] for r in single],
        "swarm_tokens_per_s": round(median(swarm, 1), 3),
        "single_tokens_per_s": round(median(single, 1), 3),
        "swarm_ttft_ms": round(median(swarm, 0) * 1000, 1),
        "single_ttft_ms": round(median(single, 0) * 1000, 1),
    }
    result["ratio_tokens_per_s"] = round(
        result["swarm_tokens_per_s"] / result["single_tokens_per_s"], 3
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
