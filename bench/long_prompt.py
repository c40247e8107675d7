"""What one long prompt leaves behind on a swarm: decode hops before and after it, and threads.

A daemon computes on one thread (pipeline_stages/compute_thread.py): a second OpenMP team in
the process (started by any other thread that once ran a large operation, such as a gRPC
handler allocating a long prompt's cache) throttles the workers of both, and every later step
of every session pays for it. This bench runs short chats through a 3-stage swarm, then one
long prompt, then the same short chats again, and compares the decode hops per stage (as the
client saw them, median) and each daemon's thread count before and after the long prompt.

The "after" chats follow the long prompt, so a slower spell of the machine between the two
halves shows up as well: run it more than once. The last line is JSON with ``hop_ms_before`` and
``hop_ms_after`` (per stage), ``after_over_before`` (per stage), ``threads_before`` and
``threads_after`` (per daemon) and the load averages.

    python -m bench.long_prompt [--dtype bfloat16] [--stage-threads 2] [--compile-decode]
        [--chats 5] [--new-tokens 64] [--long-words 600]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

SHORT = [{"role": "user", "content": "Write a haiku about the sea."}]
LONG_SENTENCE = "The workshop keeps its tools in order, and every polecat labels its bead."


def threads(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="smollm2-3stage")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--stage-threads", type=int, default=2)
    parser.add_argument("--compile-decode", action="store_true")
    parser.add_argument("--chats", type=int, default=5, help="short chats before and after")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--long-words", type=int, default=600, help="about the long prompt's")
    args = parser.parse_args()

    from base.config_loader import load_yaml_config
    from bench.inference import swarm_once
    from inference.conversation import ConversationEngine
    from inference.swarm_client import SwarmClient
    from node.config import SwarmPreset, resolve_preset_path
    from node.local_swarm import start_swarm, stop_swarm

    preset, _ = load_yaml_config(resolve_preset_path(args.preset), SwarmPreset)
    daemon = {**preset.daemon, "dtype": args.dtype, "torch_threads": args.stage_threads}
    if args.compile_decode:
        daemon["compile_decode"] = True
    preset = preset.model_copy(update={"daemon": daemon})
    words = LONG_SENTENCE.split()
    repeat = -(-args.long_words // len(words))
    long_chat = [{"role": "user", "content": " ".join([LONG_SENTENCE] * repeat)}]
    work = Path(tempfile.mkdtemp(prefix="node0-bench-long-"))
    state_file = work / "swarm.json"
    load = os.getloadavg()
    state = start_swarm(preset, args.preset, runs_dir=work / "runs", state_file=state_file)
    client = SwarmClient(preset.model, state.initial_peers)
    hops: dict[tuple[int, int], list[float]] = {}

    def on_hop_step(index, record, positions, seconds):
        if positions == 1:
            hops.setdefault(record.span, []).append(seconds)

    def chats(label: str) -> dict[str, float]:
        hops.clear()
        for _ in range(args.chats):
            _, tokens_per_s = swarm_once(engine, SHORT, args.new_tokens)
            print(f"{label}: {tokens_per_s:.2f} tok/s", flush=True)
        return {
            f"{a}-{b}": round(1000 * statistics.median(v), 2) for (a, b), v in sorted(hops.items())
        }

    try:
        engine = ConversationEngine.connect(client, on_hop_step=on_hop_step)
        swarm_once(engine, SHORT, 8)  # warm-up
        before = chats("before")
        threads_before = {p.name: threads(p.pid) for p in state.peers}
        _, long_rate = swarm_once(engine, long_chat, args.new_tokens)
        print(f"long prompt: {long_rate:.2f} tok/s", flush=True)
        after = chats("after")
        threads_after = {p.name: threads(p.pid) for p in state.peers}
    finally:
        client.close()
        stop_swarm(state_file)
    print(f"hop ms before {before}\nhop ms after  {after}")
    print(
        json.dumps(
            {
                "dtype": args.dtype,
                "stage_threads": args.stage_threads,
                "compile_decode": args.compile_decode,
                "load_average": [round(x, 2) for x in load],
                "load_average_end": [round(x, 2) for x in os.getloadavg()],
                "hop_ms_before": before,
                "hop_ms_after": after,
                "after_over_before": {k: round(after[k] / before[k], 3) for k in before},
                "threads_before": threads_before,
                "threads_after": threads_after,
            }
        )
    )


if __name__ == "__main__":
    main()
