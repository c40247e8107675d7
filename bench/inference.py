"""Inference benchmark: 3-stage local swarm vs single-process transformers, same run, per dtype.

Batch 1, greedy, ``--new-tokens`` new tokens per prompt (EOS ignored so every run has the same
length). Measures time-to-first-token and tokens/s (new tokens / wall time of the whole
generation, prompt included) for both, interleaved prompt by prompt so background noise hits
both alike. The swarm side is the conversation engine's stateless ``complete`` (a fresh session
per prompt, as an HTTP request gets; tokenization is not timed). Each ``--dtype`` gets its own
swarm (daemons with ``dtype:`` set) and the reference model loaded in the same dtype; the peak
RSS of every stage process is read from ``/proc`` before the swarm stops, beside the bytes its
weights take in that dtype. A line per prompt; the last line is JSON with ``ratio`` (swarm /
single in the same dtype, per dtype) and ``bf16_over_fp32`` (swarm bfloat16 / swarm float32).
Per span it also gives ``hop_ms``, a decode step's hop as the client saw it (median), beside
the daemon's ``stage_step_ms`` (its announced mean batch time): the difference is what gRPC,
serialisation and the client add per hop.

With several dtypes the swarms run one after another, in ABBA order over ``--rounds`` (default
2), and each dtype's figures are the mean of its rounds, so a load that drifts during the run
does not favour the dtype measured first.

A preset whose peers have ``stages: auto`` (``--preset smollm2-auto``) works too: the daemons
choose their spans, and nothing is measured until the swarm is placed (every peer online on
its span, none still joining, a route over all layers); the spans they chose are in the JSON.
``--model`` runs a preset on another model (a catalog name or a Hugging Face directory, e.g.
a tiny one for a quick check).

The stage daemons take the preset's ``torch_threads`` unless ``--stage-threads`` sets it, for
every dtype (``2``) or per dtype (``float32=1,bfloat16=2``): at batch 1 the stages compute one
after another, so each may use every core; which count is fastest depends on the dtype's
kernels on the machine, as it does for the reference (best of 1 and 2 threads, per prompt).

``--compile-decode`` has the daemons compile their decode step (``compile_decode: true``,
models/compiled_decode.py) before they announce; the reference stays transformers' eager
``generate``.

    python -m bench.inference [--preset smollm2-3stage] [--model NAME_OR_DIR]
        [--dtype float32,bfloat16] [--stage-threads N | DTYPE=N,...] [--compile-decode]
        [--new-tokens 128] [--prompts 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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


def rss_mib(pid: int, field: str = "VmHWM") -> float | None:
    """A process's peak (``VmHWM``) or current (``VmRSS``) resident set, MiB; None once it
    is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def mapped_mib(pid: int, roots: list[Path]) -> float | None:
    """Resident MiB of a process's mappings of files under ``roots`` (``/proc/PID/smaps``):
    the weight pages a stage mapped from the checkpoint or from converted copies and has read.
    Anonymous copies (the last stage's transposed head) are not in it. None once it is gone."""
    prefixes = tuple(f"{root.resolve()}/" for root in roots)
    total, inside = 0, False
    try:
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            if line[:1] in "0123456789abcdef" and "-" in line.split(" ", 1)[0]:
                inside = line.split()[-1].startswith(prefixes)
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    except OSError:
        return None
    return round(total / 1024, 1)


PLACED_TIMEOUT_S = 300.0


def wait_placed(client, peers, timeout: float = PLACED_TIMEOUT_S) -> dict[str, list]:
    """Each peer's spans once the swarm is placed: every peer announces its spans online, none
    is still joining (``stages: auto`` peers claim, load, then announce; a peer may still move
    right after it joined), and a route covers all layers. Raises after ``timeout`` seconds."""
    from base.errors import SwarmError
    from base.routing import plan_route
    from node.local_swarm import peer_id_of

    deadline = time.monotonic() + timeout
    while True:
        records = client.records()
        online = {}
        for r in records:
            if r.state == "online":
                online.setdefault(r.peer_id, []).append(list(r.span))
        spans = {p.name: sorted(online.get(peer_id_of(p), [])) for p in peers}
        try:
            plan_route(records, client.model)
            whole = True
        except SwarmError:
            whole = False
        if whole and all(spans.values()) and not any(r.state == "joining" for r in records):
            return spans
        if time.monotonic() > deadline:
            raise SwarmError(
                f"the swarm was not placed within {timeout:g} s (spans so far: {spans})",
                hint="see the peers' logs in the run directory",
            )
        time.sleep(1.0)


def run_dtype(args, dtype_name: str, conversations, preset) -> dict:
    """One swarm in ``dtype_name`` against the reference in the same dtype."""
    from transformers import AutoModelForCausalLM

    from base.paths import converted_weights_dir
    from base.precision import torch_dtype
    from inference.conversation import ConversationEngine
    from inference.swarm_client import SwarmClient
    from models.assets import prepare_model
    from models.catalog import CATALOG, resolve_model_dir
    from node.local_swarm import start_swarm, stop_swarm
    from pipeline_stages.loader import stage_bytes

    dtype = torch_dtype(dtype_name)
    model_dir = (prepare_model if preset.model in CATALOG else resolve_model_dir)(preset.model)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    preset = preset.model_copy(update={"daemon": {**preset.daemon, "dtype": dtype_name}})
    work = Path(tempfile.mkdtemp(prefix="node0-bench-"))
    state_file = work / "swarm.json"
    state = start_swarm(preset, args.preset, runs_dir=work / "runs", state_file=state_file)
    client = SwarmClient(preset.model, state.initial_peers)
    try:
        spans = wait_placed(client, state.peers)  # fixed stages: at once
        hops: dict[tuple[int, int], list[float]] = {}

        def on_hop_step(index, record, positions, seconds):
            if positions == 1:  # decode steps only
                hops.setdefault(record.span, []).append(seconds)

        # the catalog's prompt format (chat)
        engine = ConversationEngine.connect(client, on_hop_step=on_hop_step)
        prompts = [
            engine.prepare(m, max_new_tokens=args.new_tokens).prompt_ids for m in conversations
        ]
        swarm_once(engine, conversations[0], 8)  # warm-up both paths
        single_process(model, prompts[0], 8)
        hops.clear()
        swarm, single = [], []
        for messages, ids in zip(conversations, prompts, strict=True):
            single.append(single_process(model, ids, args.new_tokens))
            swarm.append(swarm_once(engine, messages, args.new_tokens))
            print(
                f"{dtype_name:>8} prompt {len(ids):3d} tokens: swarm ttft "
                f"{swarm[-1][0] * 1000:6.1f} ms {swarm[-1][1]:5.2f} tok/s | single ttft "
                f"{single[-1][0] * 1000:6.1f} ms {single[-1][1]:5.2f} tok/s "
                f"({single[-1][2]} threads)",
                flush=True,
            )
        step_ms = {
            r.span: r.step_ms for r in client.records() if r.state == "online" and r.span in hops
        }
        rss = {peer.name: rss_mib(peer.pid) for peer in state.peers}
        rss_now = {peer.name: rss_mib(peer.pid, "VmRSS") for peer in state.peers}
        weight_roots = [Path(model_dir), converted_weights_dir()]
        mapped = {peer.name: mapped_mib(peer.pid, weight_roots) for peer in state.peers}
    finally:
        client.close()
        stop_swarm(state_file)
    weights = {
        name: round(sum(stage_bytes(model_dir, *span, dtype) for span in held) / 2**20, 1)
        for name, held in spans.items()
    }

    def median(rows, i):
        return statistics.median(r[i] for r in rows)

    result = {
        "single_threads": [r[2] for r in single],
        "swarm_tokens_per_s": round(median(swarm, 1), 3),
        "single_tokens_per_s": round(median(single, 1), 3),
        "swarm_ttft_ms": round(median(swarm, 0) * 1000, 1),
        "single_ttft_ms": round(median(single, 0) * 1000, 1),
        "stage_peak_rss_mib": rss,
        "stage_rss_after_mib": rss_now,
        "stage_weights_mib": weights,
        "stage_mapped_weights_mib": mapped,
        "stage_spans": spans,
        # per span: decode hop as the client saw it (median), and the daemon's announced
        # step_ms (mean batch time over its last 30 s, the last prompt's decode and prefill)
        "hop_ms": {f"{a}-{b}": round(1000 * statistics.median(t), 2) for (a, b), t in hops.items()},
        "stage_step_ms": {f"{a}-{b}": round(ms, 2) for (a, b), ms in step_ms.items()},
    }
    result["ratio"] = round(result["swarm_tokens_per_s"] / result["single_tokens_per_s"], 3)
    return result


def merge_rounds(runs: list[dict]) -> dict:
    """One dtype's rounds: mean tokens/s and TTFT, peak RSS and mapped weights the largest,
    rounds kept."""
    if len(runs) == 1:
        return runs[0]

    def mean(key):
        return round(statistics.mean(r[key] for r in runs), 3)

    merged = {
        **runs[0],
        **{k: mean(k) for k in runs[0] if k.endswith(("_tokens_per_s", "_ttft_ms"))},
        **{
            key: {name: max(r[key][name] or 0 for r in runs) for name in runs[0][key]}
            for key in ("stage_peak_rss_mib", "stage_mapped_weights_mib")
        },
        **{
            key: {
                span: round(statistics.mean(r[key][span] for r in runs if span in r[key]), 2)
                for span in runs[0][key]
            }
            for key in ("hop_ms", "stage_step_ms")
        },
        "rounds": [
            {k: r[k] for k in ("swarm_tokens_per_s", "single_tokens_per_s", "ratio")} for r in runs
        ],
    }
    merged["ratio"] = round(merged["swarm_tokens_per_s"] / merged["single_tokens_per_s"], 3)
    return merged


def stage_threads(spec: str | None, dtypes: list[str]) -> dict[str, int]:
    """``--stage-threads``: ``N`` (every dtype) or ``DTYPE=N,...`` -> threads per dtype named."""
    if not spec:
        return {}
    if "=" not in spec:
        return dict.fromkeys(dtypes, _threads(spec))
    out = {}
    for item in spec.split(","):
        dtype, _, n = item.partition("=")
        if dtype.strip() not in dtypes:
            raise ValueError(f"--stage-threads names {dtype.strip()!r}, not one of --dtype")
        out[dtype.strip()] = _threads(n)
    return out


def _threads(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(f"--stage-threads: {text!r} is not a thread count >= 1")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument(
        "--preset",
        default="smollm2-3stage",
        help="swarm preset (configs/swarm/); one with `stages: auto` peers waits for placement",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="run the preset on this model instead (catalog name or HF directory)",
    )
    parser.add_argument(
        "--dtype",
        default="float32,bfloat16",
        help="comma-separated stage dtypes to measure (float32, bfloat16, float16)",
    )
    parser.add_argument(
        "--stage-threads",
        default=None,
        help="torch threads per stage daemon: N for every dtype, or per dtype as "
        "DTYPE=N,... (e.g. float32=1,bfloat16=2; a dtype not named keeps the preset's)",
    )
    parser.add_argument(
        "--compile-decode",
        action="store_true",
        help="the stage daemons compile their decode step (daemon setting compile_decode)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="swarms per dtype, in ABBA order (the dtypes' swarms run one after another)",
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    if not dtypes or any(d not in ("float32", "bfloat16", "float16") for d in dtypes):
        parser.error("--dtype takes float32, bfloat16 and/or float16")

    from base.config_loader import load_yaml_config
    from node.config import SwarmPreset, resolve_preset_path

    load_average = [round(x, 2) for x in os.getloadavg()]
    conversations = [[{"role": "user", "content": q}] for q in QUESTIONS[: args.prompts]]
    preset, _ = load_yaml_config(resolve_preset_path(args.preset), SwarmPreset)
    if args.model:
        preset = preset.model_copy(update={"model": args.model})
    try:
        threads = stage_threads(args.stage_threads, dtypes)
    except ValueError as exc:
        parser.error(str(exc))
    if args.compile_decode:
        preset = preset.model_copy(update={"daemon": {**preset.daemon, "compile_decode": True}})
    presets = {
        d: preset.model_copy(update={"daemon": {**preset.daemon, "torch_threads": threads[d]}})
        if threads.get(d)
        else preset
        for d in dtypes
    }
    rounds: dict[str, list[dict]] = {d: [] for d in dtypes}
    for r in range(args.rounds):  # ABBA...: a load that drifts over the run hits every dtype alike
        for d in dtypes if r % 2 == 0 else dtypes[::-1]:
            rounds[d].append(run_dtype(args, d, conversations, presets[d]))
    per_dtype = {d: merge_rounds(runs) for d, runs in rounds.items()}
    result = {
        "new_tokens": args.new_tokens,
        "prompts": len(conversations),
        "stages": len(preset.peers),
        "placement": "auto" if any(p.stages == "auto" for p in preset.peers) else "fixed",
        "stage_threads": {d: p.daemon.get("torch_threads", "default") for d, p in presets.items()},
        "compile_decode": args.compile_decode,
        "load_average": load_average,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "ratio": {d: r["ratio"] for d, r in per_dtype.items()},
        "per_dtype": per_dtype,
    }
    if "float32" in per_dtype:
        result["ratio_tokens_per_s"] = per_dtype["float32"]["ratio"]  # the float32 figure
    if {"float32", "bfloat16"} <= per_dtype.keys():
        fp32, bf16 = per_dtype["float32"], per_dtype["bfloat16"]
        result["bf16_over_fp32"] = round(bf16["swarm_tokens_per_s"] / fp32["swarm_tokens_per_s"], 3)
        result["single_bf16_over_fp32"] = round(
            bf16["single_tokens_per_s"] / fp32["single_tokens_per_s"], 3
        )
        result["stage_rss_bf16_over_fp32"] = {
            name: round(bf16["stage_peak_rss_mib"][name] / fp32["stage_peak_rss_mib"][name], 3)
            for name in fp32["stage_peak_rss_mib"]
            if bf16["stage_peak_rss_mib"].get(name) and fp32["stage_peak_rss_mib"][name]
        }
        # how much of the weights' saving (half their float32 bytes) the peak RSS shows
        result["stage_rss_saving_over_weight_saving"] = {
            name: round(
                (fp32["stage_peak_rss_mib"][name] - bf16["stage_peak_rss_mib"][name])
                / (fp32["stage_weights_mib"][name] - bf16["stage_weights_mib"][name]),
                3,
            )
            for name in result["stage_rss_bf16_over_fp32"]
        }
        # the weight pages each stage has resident, as mapped files (both dtypes map them)
        result["stage_mapped_weights_bf16_over_fp32"] = {
            name: round(
                bf16["stage_mapped_weights_mib"][name] / fp32["stage_mapped_weights_mib"][name], 3
            )
            for name in fp32["stage_mapped_weights_mib"]
            if bf16["stage_mapped_weights_mib"].get(name) and fp32["stage_mapped_weights_mib"][name]
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
