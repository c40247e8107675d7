"""WAN benchmark: the 3-stage swarm and adapter averaging over emulated links (bench.wan_net).

Three stage daemons (the tiny model, layers split 2/2/2) run in network namespaces behind a
router that delays every connection by the RTT and drops ``--loss`` of the packets; the client
(this process) is a host too. Measured:

- **tokens/s vs RTT** (``--rtts``, default 0, 10, 50, 100 ms): greedy decode of ``--new-tokens``
  per prompt, one session at a time. The per-token time of the decode (prefill excluded) is set
  against the floor ``hops x RTT`` (the client drives each of the 3 hops once per token, and one
  round trip per hop is the least a pipeline with the client in the loop can do);
  ``floor_ratio`` = achieved ÷ floor.
- **batching at 50 ms**: ``--sessions`` sessions at once; the gain is their summed tokens/s
  over one session's.
- **training at 50 ms**: ``node0 train`` (``--train-steps`` steps) over the same swarm; the mean
  step time after the first step.
- **averaging at 50 ms**: two replicas in two namespaces (bench.wan_averaging) train the same
  adapter on their own shards and average every step, uncompressed (float32), int8 and int4;
  bytes a round on the wire (the router's interface counters: headers, retransmits, matchmaking,
  checksums and any state resync included), the all-reduce payload (hivemind's serialized
  parts) and the DHT requests the replicas served (count and serialized bytes); held-out loss
  after ``--avg-steps`` steps on the same data. And the DiLoCo mode
  (``--diloco-k`` local steps, int8 pseudo-gradients, outer Nesterov SGD) against per-step
  averaging at the same number of local steps.

The last line is JSON with ``tokens_per_s_at_50ms``, ``floor_ratio_at_50ms``,
``averaging_bytes_ratio`` (int4 ÷ uncompressed wire bytes a round; ``_int8``: int8's),
``averaging_payload_ratio``, ``heldout_loss_rel_diff`` (int4 against float32; ``_int8``), and
the load average at start and end. Needs root, ``ip`` and ``nft`` (see docs/wan.md).

    python -m bench.wan [--rtts 0,10,50,100] [--new-tokens 24] [--prompts 2] [--sessions 4]
        [--train-steps 3] [--avg-steps 8] [--diloco-k 4] [--loss 0.01]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOPS = 3
SPLIT = [("s0", [(0, 2)]), ("s1", [(2, 4)]), ("s2", [(4, 6)])]
PROMPTS = [[5, 17, 99, 3, 42], [200, 100, 50, 25, 12, 6, 3], [7] * 12, [1, 2, 3, 4]]
_REPO = Path(__file__).resolve().parent.parent


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


async def _generate(client, tokenizer, prompts: list[list[int]], new_tokens: int) -> list:
    return [
        await client.generate_once(tokenizer, ids, max_new_tokens=new_tokens, step_timeout=30.0)
        for ids in prompts
    ]


def decode_rate(client, tokenizer, prompts, new_tokens: int) -> dict:
    """One session at a time: per-token decode time (median over prompts) and tokens/s."""
    results = asyncio.run(_generate(client, tokenizer, prompts, new_tokens))
    per_token = statistics.median(
        (r.elapsed - r.time_to_first_token) / max(1, len(r.token_ids) - 1) for r in results
    )
    return {
        "per_token_ms": round(per_token * 1000, 2),
        "tokens_per_s": round(1 / per_token, 3),
        "ttft_ms": round(statistics.median(r.time_to_first_token for r in results) * 1000, 1),
    }


def batched_rate(client, tokenizer, prompt: list[int], new_tokens: int, sessions: int) -> float:
    """``sessions`` sessions at once: their summed decode tokens/s."""

    async def run():
        started = time.perf_counter()
        results = await asyncio.gather(
            *(
                client.generate_once(
                    tokenizer, prompt, max_new_tokens=new_tokens, step_timeout=30.0
                )
                for _ in range(sessions)
            )
        )
        return results, time.perf_counter() - started

    results, wall = asyncio.run(run())
    return sum(len(r.token_ids) for r in results) / wall


def train_steps(work: Path, model_dir: Path, steps: int) -> dict:
    """``node0 train`` over the running swarm; step times from its progress lines."""
    import yaml

    config = {
        "model": str(model_dir),
        "adapter": "eq",
        "run_id": f"wanbench{int(time.time())}",
        "lora": {"rank": 4, "alpha": 8, "init_seed": 7},
        "learning_rate": 5e-3,
        "max_grad_norm": 0.0,
        "steps": steps,
        "checkpoint_every": 0,
        "micro_batch_size": 2,
        "data": {
            "train": [str(_REPO / "samples/sft/gastown_conventions.train.jsonl")],
            "heldout": [str(_REPO / "samples/sft/gastown_conventions.heldout.jsonl")],
            "prompt_mode": "completion",
            "max_length": 128,
            "batch_size": 4,
            "seed": 3,
        },
    }
    path = work / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "train", "--config", str(path)]
        + ["--swarm-file", str(work / "swarm.json"), "--runs-dir", str(work / "runs")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=_REPO,
        start_new_session=True,
    )
    stamps = []
    for line in proc.stderr:
        if line.startswith("[train] step"):
            stamps.append(time.monotonic())
    proc.wait(600)
    if proc.returncode != 0 or len(stamps) < 2:
        raise RuntimeError(f"node0 train failed ({proc.returncode}): {proc.stdout.read()[-2000:]}")
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return {"steps": len(stamps), "step_s": round(statistics.mean(gaps), 3)}


def averaging(net, work: Path, model_dir: Path, args) -> dict:
    from bench.wan_averaging import run_pair

    out = {}
    runs = {
        "none": {"compression": "none"},
        "int8": {"compression": "int8"},
        "int4": {"compression": "int4"},
        "diloco_int8": {"compression": "int8", "local_steps": args.diloco_k},
    }
    for name, kwargs in runs.items():
        r = run_pair(net, work / f"avg-{name}", model_dir, steps=args.avg_steps, **kwargs)
        a, b = r["replicas"]
        out[name] = {
            "bytes_per_round": round(r["bytes_per_round"]),
            "payload_bytes_per_round": round(r["payload_bytes_per_round"]),
            "dht_requests_per_round": round(r["dht_requests_per_round"], 1),
            "dht_bytes_per_round": round(r["dht_bytes_per_round"]),
            "seconds_per_round": round(r["seconds_per_round"], 3),
            "rounds": len(a["rounds"]),
            "resyncs": sum(x["resynced"] for x in a["rounds"] + b["rounds"]),
            "all_averaged": all(x["averaged"] for x in a["rounds"] + b["rounds"]),
            "heldout_loss": round((a["heldout_loss"] + b["heldout_loss"]) / 2, 5),
            "train_loss": [
                round((x + y) / 2, 4) for x, y in zip(a["losses"], b["losses"], strict=True)
            ],
            "wire_bytes_total": r["bytes"],
            "wall_s": round(r["wall_s"], 2),
        }
        print(f"averaging {name}: {json.dumps(out[name])}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rtts", default="0,10,50,100", help="round-trip times to measure, ms")
    parser.add_argument("--loss", type=float, default=0.01, help="share of packets dropped")
    parser.add_argument("--new-tokens", type=int, default=24, help="tokens per prompt")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per RTT (max 4)")
    parser.add_argument("--sessions", type=int, default=4, help="concurrent sessions at 50 ms")
    parser.add_argument("--train-steps", type=int, default=3, help="node0 train steps at 50 ms")
    parser.add_argument("--avg-steps", type=int, default=8, help="steps of each averaging run")
    parser.add_argument("--diloco-k", type=int, default=4, help="DiLoCo local steps")
    parser.add_argument("--skip-averaging", action="store_true", help="swarm figures only")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()

    from bench.wan_net import unavailable_reason

    reason = unavailable_reason()
    if reason:
        sys.exit(f"bench.wan: cannot emulate a WAN here: {reason}")
    load_start = _load()
    rtts = [float(x) for x in args.rtts.split(",") if x.strip()]
    prompts = PROMPTS[: max(1, min(args.prompts, len(PROMPTS)))]
    work = Path(tempfile.mkdtemp(prefix="node0-wan-bench-"))
    try:
        result = run(args, work, rtts, prompts)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result["load_average"] = load_start
    result["load_average_end"] = _load()
    print(json.dumps(result))


def run(args, work: Path, rtts: list[float], prompts: list[list[int]]) -> dict:
    """Every measurement of the module doc, in ``work``; returns the result without loads."""
    from bench.wan_net import WanNetwork
    from bench.wan_swarm import wan_swarm
    from inference.swarm_client import SwarmClient
    from models.tiny import build_tiny_llama

    model_dir = build_tiny_llama(work / "tiny-llama", seed=0)
    result: dict = {"hops": HOPS, "loss": args.loss, "new_tokens": args.new_tokens}
    with WanNetwork(len(SPLIT), rtt_ms=0, loss=args.loss) as net:
        with wan_swarm(net, work / "swarm", str(model_dir), SPLIT) as state:
            client = SwarmClient(str(model_dir), state.initial_peers)
            try:
                client.wait_for_route()
                tokenizer = client.load_tokenizer()
                asyncio.run(_generate(client, tokenizer, prompts[:1], 4))  # warm-up
                by_rtt = {}
                for rtt in rtts:
                    net.set_rtt(rtt)
                    row = decode_rate(client, tokenizer, prompts, args.new_tokens)
                    if rtt > 0:
                        row["floor_ratio"] = round(row["per_token_ms"] / (HOPS * rtt), 3)
                    by_rtt[f"{rtt:g}"] = row
                    print(f"rtt {rtt:g} ms: {json.dumps(row)}", flush=True)
                result["by_rtt_ms"] = by_rtt
                net.set_rtt(50)
                single = decode_rate(client, tokenizer, prompts[:1], args.new_tokens)
                batched = batched_rate(
                    client, tokenizer, prompts[0], args.new_tokens, args.sessions
                )
                result["batching_at_50ms"] = {
                    "sessions": args.sessions,
                    "tokens_per_s": round(batched, 3),
                    "single_session_tokens_per_s": single["tokens_per_s"],
                    "gain": round(batched / single["tokens_per_s"], 3),
                }
                print(f"batching at 50 ms: {json.dumps(result['batching_at_50ms'])}", flush=True)
            finally:
                client.close()
            if args.train_steps >= 2:
                result["training_at_50ms"] = train_steps(
                    work / "swarm", model_dir, args.train_steps
                )
                print(f"training at 50 ms: {json.dumps(result['training_at_50ms'])}", flush=True)
        if not args.skip_averaging:
            net.set_rtt(50)
            result["averaging_at_50ms"] = avg = averaging(net, work, model_dir, args)
            none = avg["none"]
            for name in ("int4", "int8"):  # the headline figures are int4's (module doc)
                tail = "" if name == "int4" else f"_{name}"
                run = avg[name]
                result[f"averaging_bytes_ratio{tail}"] = round(
                    run["bytes_per_round"] / none["bytes_per_round"], 3
                )
                result[f"averaging_payload_ratio{tail}"] = round(
                    run["payload_bytes_per_round"] / none["payload_bytes_per_round"], 4
                )
                result[f"heldout_loss_rel_diff{tail}"] = round(
                    abs(run["heldout_loss"] - none["heldout_loss"]) / none["heldout_loss"], 4
                )
    at50 = result["by_rtt_ms"].get("50")
    result["tokens_per_s_at_50ms"] = at50["tokens_per_s"] if at50 else None
    result["floor_ratio_at_50ms"] = at50["floor_ratio"] if at50 else None
    return result


if __name__ == "__main__":
    main()
